"""Strategies by name, for the CLI and configs: ``"replay+ewc"`` -> ``chain(...)``.

Each registered factory's keyword parameters become hyperparameters that can
be given by name (on the command line as ``--mem-size`` for ``mem_size``).
A name shared by several chained strategies goes to each of them: for
``mem_size`` or ``ewc_lambda`` that is one meaning, but ``alpha`` is LwF's
distillation weight, MAS's importance decay and DER's logit weight. A spec
gives a strategy values of its own in parentheses, which win over the
shared ones: ``"lwf(alpha=2.0)+mas(alpha=0.5)"``.

Example:
  >>> from_spec("naive").name
  'naive'
  >>> parse_spec("lwf(alpha=2.0)+mas")
  [('lwf', {'alpha': 2.0}), ('mas', {})]
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxcl import _validation
from jaxcl.strategies.base import Strategy, chain

__all__ = ["REGISTRY", "StrategyEntry", "from_spec", "open_parameters",
           "parse_spec", "register"]


class StrategyEntry(NamedTuple):
  """A registered strategy factory and its keyword parameters."""

  name: str
  factory: Callable[..., Strategy]
  parameters: Mapping[str, inspect.Parameter]


REGISTRY: dict[str, StrategyEntry] = {}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise ValueError(f"strategy name must be letters, digits and underscores, "
                     f"not starting with a digit (no '+', parentheses, quotes "
                     f"or spaces: specs join names with '+' and give values "
                     f"in parentheses), got {name!r}.")
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


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """Splits a spec into its strategies' names and their own hyperparameters.

  A spec is strategy names joined by ``+``; a name may be followed by
  values of its own as Python literals, ``name(param=value, ...)``.

  Args:
    spec: For example ``"replay+ewc"`` or ``"lwf(alpha=2.0)+mas(alpha=0.5)"``.

  Returns:
    ``(name, {param: value})`` per strategy, in order.

  Raises:
    ValueError: For a spec that is not of that form, an unknown name, or a
      value for a parameter its strategy does not take.

  Example:
    >>> parse_spec("replay(mem_size=200)+ewc")
    [('replay', {'mem_size': 200}), ('ewc', {})]
  """
  if not isinstance(spec, str):
    raise ValueError(f"strategy spec must be a string, got {spec!r}.")
  return [_parse_term(spec, term) for term in _split_terms(spec)]


def _split_terms(spec: str) -> list[str]:
  """``spec`` split at each ``+`` outside parentheses and quotes."""
  terms, start, depth, quote = [], 0, 0, None
  for i, char in enumerate(spec):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "()":
      depth += 1 if char == "(" else -1
    elif char == "+" and depth == 0:
      terms.append(spec[start:i])
      start = i + 1
  return [*terms, spec[start:]]


def _parse_term(spec: str, term: str) -> tuple[str, dict[str, Any]]:
  """``"name"`` or ``"name(param=value, ...)"`` -> (name, {param: value})."""
  name, paren, rest = term.strip().partition("(")
  name = name.strip()
  expected = ("expected strategy names joined by '+', each optionally with "
              "values of its own: NAME or NAME(PARAM=VALUE, ...)")
  if not name or (paren and not rest.endswith(")")):
    raise ValueError(f"strategy spec {spec!r}: cannot read {term.strip()!r}; "
                     f"{expected}.")
  _validation.check_choice("strategy", name, REGISTRY)
  if not paren:
    return name, {}
  try:
    call = ast.parse(f"f({rest}", mode="eval").body
  except SyntaxError as error:
    call, problem = None, error.msg
  except (RecursionError, MemoryError):
    call, problem = None, "nested too deeply"
  else:
    # One call of the name, nothing around it (a second call's values
    # would be lost).
    problem = (
        None if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        and not call.args and all(k.arg is not None for k in call.keywords)
        else "expected one pair of parentheses holding PARAM=VALUE pairs")
  own = {}
  for keyword in [] if problem else call.keywords:
    if keyword.arg in own:
      problem = f"it gives {keyword.arg} twice"
      break
    try:
      own[keyword.arg] = ast.literal_eval(keyword.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
      problem = (f"the value of {keyword.arg}, "
                 f"{ast.unparse(keyword.value)!r}, is not a Python literal")
      break
  if problem:
    raise ValueError(f"strategy spec {spec!r}: cannot read {term.strip()!r} "
                     f"({problem}); {expected}, with Python literals as "
                     "values.")
  takes = REGISTRY[name].parameters
  unknown = sorted(set(own) - set(takes))
  if unknown:
    raise ValueError(f"strategy spec {spec!r}: {name} takes no {unknown[0]}; "
                     f"expected one of {sorted(takes)}.")
  return name, own


def open_parameters(spec: str) -> set[str]:
  """The hyperparameters that keyword arguments can still set for ``spec``:
  those of its strategies that the spec does not set itself.

  Example:
    >>> sorted(open_parameters("lwf(alpha=1.0)+mas"))[:2]
    ['alpha', 'lambda_reg']
  """
  return {p for name, own in parse_spec(spec)
          for p in REGISTRY[name].parameters if p not in own}


def from_spec(spec: str, **hyperparameters: Any) -> Strategy:
  """Builds a strategy from a spec and named hyperparameters.

  Each hyperparameter goes to every strategy of the spec that takes it,
  except those given their own value in the spec (see :func:`parse_spec`).
  Hyperparameters that are None are left at each factory's default; one
  that no strategy would receive is an error.

  Args:
    spec: Strategy names joined by ``+`` (chained in that order), each
      optionally with values of its own: ``"lwf(alpha=2.0)+mas"``.
    **hyperparameters: Values by parameter name (e.g. ``mem_size=200``).

  Returns:
    The strategy (a ``chain`` when several names are given).

  Example:
    >>> from_spec("lwf(alpha=2.0)+mas", alpha=0.5).name
    'lwf+mas'
  """
  terms = parse_spec(spec)
  given = {k: v for k, v in hyperparameters.items() if v is not None}
  takes = open_parameters(spec)
  unused = set(given) - takes
  if unused:
    # Only a spec that sets values itself can have taken a parameter away.
    winning = (" (values the spec gives a strategy itself win)"
               if any(own for _, own in terms) else "")
    raise ValueError(f"hyperparameters {sorted(unused)} are not used by "
                     f"strategy {spec!r}; it takes {sorted(takes)}"
                     f"{winning}.")
  strategies = []
  for (name, own), term in zip(terms, _split_terms(spec)):
    entry = REGISTRY[name]
    shared = {k: v for k, v in given.items() if k in entry.parameters}
    required = [k for k, p in entry.parameters.items()
                if p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in shared and k not in own]
    if missing:
      raise ValueError(
          f"strategy {name!r} needs {missing}, which have no default: give "
          f"them in the spec ({name}({missing[0]}=...)) or by name.")
    try:
      strategy = entry.factory(**{**shared, **own})
    except (ValueError, TypeError) as error:
      # The factory with the values given by name that reach it (not those
      # the spec overrides) and the spec's only where nothing else gives one.
      reaching = {k: v for k, v in shared.items() if k not in own}
      if not own or _fails(entry, {**{k: own[k] for k in required
                                       if k not in reaching}, **reaching}):
        raise  # A value given by name is wrong (it fails without the spec's).
      kind = ValueError if isinstance(error, ValueError) else TypeError
      own_error = kind(f"{term.strip()}: {error}")
      # Names the term, so that a caller (the CLI) can tell it from an
      # error of a hyperparameter given by name.
      own_error.spec_term = term.strip()
      raise own_error from error
    if not isinstance(strategy, Strategy):
      raise TypeError(f"the factory of strategy {name!r} returned "
                      f"{type(strategy).__name__}; expected a jaxcl Strategy.")
    strategies.append(strategy)
  return strategies[0] if len(strategies) == 1 else chain(*strategies)


def _fails(entry: StrategyEntry, values: Mapping[str, Any]) -> bool:
  """Whether the factory refuses ``values``."""
  try:
    entry.factory(**values)
  except (ValueError, TypeError):
    return True
  return False
