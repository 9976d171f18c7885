"""Strategies by name, for the CLI and configs: ``"replay+ewc"`` -> ``chain(...)``.

Each registered factory's keyword parameters become hyperparameters that can
be given by name (on the command line as ``--mem-size`` for ``mem_size``).
A name shared by several chained strategies goes to each of them: for
``mem_size`` or ``ewc_lambda`` that is one meaning, but ``alpha`` is LwF's
distillation weight, MAS's importance decay and DER's logit weight; chain
such strategies in Python (``chain(lwf(alpha=2.0), mas(alpha=0.5))``) to
give each its own value.

Example:
  >>> from_spec("naive").name
  'naive'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxcl import _validation
from jaxcl.strategies.base import Strategy, chain

__all__ = ["REGISTRY", "StrategyEntry", "from_spec", "register"]


class StrategyEntry(NamedTuple):
  """A registered strategy factory and its keyword parameters."""

  name: str
  factory: Callable[..., Strategy]
  parameters: Mapping[str, inspect.Parameter]


REGISTRY: dict[str, StrategyEntry] = {}


def register(name: str, factory: Callable[..., Strategy], *,
             override: bool = False) -> None:
  """Makes ``factory`` available by ``name`` to :func:`from_spec` and the CLI.

  Args:
    name: The strategy's name in specs (no ``+``, no spaces).
    factory: A function of keyword hyperparameters returning a
      :class:`Strategy`; each parameter becomes a hyperparameter by name.
    override: Replace a strategy already registered under ``name`` (else
      that is an error, so that a built-in is not replaced by accident).

  Raises:
    ValueError: For a name that specs cannot hold or that is taken, or a
      factory whose hyperparameters cannot be given by name.
  """
  if not isinstance(name, str) or not name or "+" in name or (
      name != "".join(name.split())):
    raise ValueError(f"strategy name must be a non-empty string without '+' "
                     f"or spaces (specs join names with '+'), got {name!r}.")
  if name in REGISTRY and not override:
    raise ValueError(f"strategy {name!r} is already registered; pass "
                     "override=True to replace it.")
  signature = inspect.signature(factory).parameters.values()
  hidden = [p.name for p in signature
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY)]
  if hidden or "spec" in {p.name for p in signature}:
    raise ValueError(
        f"factory of strategy {name!r} must take its hyperparameters as named "
        f"parameters (other than 'spec', from_spec's own), got "
        f"{hidden or ['spec']}.")
  params = {p.name: p for p in signature}
  REGISTRY[name] = StrategyEntry(name, factory, params)


def from_spec(spec: str, **hyperparameters: Any) -> Strategy:
  """Builds a strategy from ``"name"`` or ``"a+b"`` and named hyperparameters.

  Hyperparameters that are None are left at each factory's default; a
  hyperparameter that none of the named strategies takes is an error.

  Args:
    spec: Strategy names joined by ``+`` (chained in that order).
    **hyperparameters: Values by parameter name (e.g. ``mem_size=200``).

  Returns:
    The strategy (a ``chain`` when several names are given).
  """
  names = [n.strip() for n in str(spec).split("+")]
  entries = [REGISTRY[_validation.check_choice("strategy", n, REGISTRY)]
             for n in names]
  given = {k: v for k, v in hyperparameters.items() if v is not None}
  unused = set(given) - {p for e in entries for p in e.parameters}
  if unused:
    raise ValueError(f"hyperparameters {sorted(unused)} are not used by "
                     f"strategy {spec!r}; it takes "
                     f"{sorted({p for e in entries for p in e.parameters})}.")
  strategies = [e.factory(**{k: v for k, v in given.items() if k in e.parameters})
                for e in entries]
  return strategies[0] if len(strategies) == 1 else chain(*strategies)
