"""Continual-learning strategies as composable NamedTuples of pure functions.

Each family module exports its factories in ``__all__`` and a ``STRATEGIES``
mapping (CLI name -> factory); all are registered here for :func:`from_spec`
and the ``jaxcl`` command.
"""

from jaxcl.strategies import (architectural, bias_correction, classifiers,
                              contrastive, cross_task, deep_slda, dualnet,
                              experts,
                              generative, meta, projection, prototypes,
                              pruning, regularization, rehearsal)
from jaxcl.strategies.architectural import *  # noqa: F403
from jaxcl.strategies.base import (Strategy, StrategyContext, UpdateOps,
                                   chain, naive)
from jaxcl.strategies.bias_correction import *  # noqa: F403
from jaxcl.strategies.classifiers import *  # noqa: F403
from jaxcl.strategies.contrastive import *  # noqa: F403
from jaxcl.strategies.cross_task import *  # noqa: F403
from jaxcl.strategies.deep_slda import *  # noqa: F403
from jaxcl.strategies.dualnet import *  # noqa: F403
from jaxcl.strategies.experts import *  # noqa: F403
from jaxcl.strategies.generative import *  # noqa: F403
from jaxcl.strategies.meta import *  # noqa: F403
from jaxcl.strategies.projection import *  # noqa: F403
from jaxcl.strategies.prototypes import *  # noqa: F403
from jaxcl.strategies.pruning import *  # noqa: F403
from jaxcl.strategies.registry import (REGISTRY, StrategyEntry, from_spec,
                                      open_parameters, parse_spec, register)
from jaxcl.strategies.regularization import *  # noqa: F403
from jaxcl.strategies.rehearsal import *  # noqa: F403

__all__ = [
    "REGISTRY",
    "Strategy",
    "StrategyContext",
    "StrategyEntry",
    "UpdateOps",
    "chain",
    "from_spec",
    "naive",
    "open_parameters",
    "parse_spec",
    "register",
    *architectural.__all__,
    *bias_correction.__all__,
    *classifiers.__all__,
    *contrastive.__all__,
    *cross_task.__all__,
    *deep_slda.__all__,
    *dualnet.__all__,
    *experts.__all__,
    *generative.__all__,
    *meta.__all__,
    *projection.__all__,
    *prototypes.__all__,
    *pruning.__all__,
    *regularization.__all__,
    *rehearsal.__all__,
]

register("naive", naive)
for _family in (regularization, rehearsal, projection, generative,
                architectural, deep_slda, bias_correction, meta,
                prototypes, contrastive, experts, pruning, classifiers,
                cross_task, dualnet):
  for _name, _factory in _family.STRATEGIES.items():
    register(_name, _factory)
