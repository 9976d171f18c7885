"""Host copies of device arrays, on one host or many.

With ``jax.distributed.initialize``, a mesh spans the devices of every
process, and an array split over it (runs sharded over devices) has parts on
other hosts that ``jax.device_get`` cannot fetch. Every process runs the
same code, so they gather those arrays together.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils

__all__ = ["host_copy", "replicated"]


def host_copy(tree: Any) -> Any:
  """``jax.device_get(tree)``, gathering arrays that span other hosts.

  Every process must call it with the same tree (a collective when some
  array is split over hosts).

  Example:
    >>> host_copy({"w": jax.numpy.ones(2)})
    {'w': array([1., 1.], dtype=float32)}
  """
  def local(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return multihost_utils.process_allgather(leaf, tiled=True)
    return leaf
  return jax.device_get(jax.tree.map(local, tree))


def replicated(tree: Any) -> Any:
  """``tree`` replicated on every device if some array in it spans other hosts.

  Lets each process read every run of a result; ``tree`` comes back as it
  is (no copy) when this process can already read all of it.
  """
  spread = [leaf for leaf in jax.tree.leaves(tree)
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable]
  if not spread:
    return tree
  everywhere = jax.sharding.NamedSharding(spread[0].sharding.mesh,
                                          jax.sharding.PartitionSpec())
  return jax.jit(lambda t: t, out_shardings=everywhere)(tree)
