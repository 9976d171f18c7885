"""Strategies by name, for the CLI and configs: ``"replay+ewc"`` -> ``chain(...)``.

Each registered factory's keyword parameters become hyperparameters that can
be given by name (on the command line as ``--mem-size`` for ``mem_size``).
A name shared by several strategies (``mem_size``) means the same thing for
each of them.

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


def register(name: str, factory: Callable[..., Strategy]) -> None:
  """Makes ``factory`` available by ``name`` to :func:`from_spec` and the CLI."""
  params = {p.name: p for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
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
