"""The one noise source of every sampler (docs/numerics.md §6).

Every Gaussian draw a sampler makes — the initial sample, each predictor and corrector noise, a
churn or an SDE-solver stage — comes from `NoiseSource.draw`: draw number c is
`normal(fold_in(rng, c), (B, H, W, C))`, coloured by TDAS here and nowhere else. The counter c is
carried in the sampler's loop state, so each call gives a fresh draw, and a method that needs k
draws per step simply draws k times. Arrays are global (jit over a batch-sharded mesh): the same
seed gives the same draws on any number of devices and hosts.
"""
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from tdas.noise import Coloring


@struct.dataclass
class NoiseSource:
  """A numbered stream of standard-normal draws of one shape, optionally TDAS-coloured.

  A pytree (carry it through `lax` loops). `draw` returns the draw and the source advanced by
  one; the source itself never changes.

  Attributes:
    rng: the sampling key of this batch.
    counter: int32 scalar, the number of the next draw.
    coloring: TDAS's filters (`tdas.noise.Coloring`), or None for vanilla noise.
    shape: (B, H, W, C) of every draw (static).
    sharding: the batch sharding the draws are constrained to, or None (static).
  """
  rng: jax.Array
  counter: jax.Array
  coloring: Optional[Coloring]
  shape: Tuple[int, ...] = struct.field(pytree_node=False)
  sharding: Any = struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, rng, shape, coloring: Optional[Coloring] = None, sharding=None):
    """The source whose first draw is number 0."""
    return cls(rng=rng, counter=jnp.zeros((), jnp.int32), coloring=coloring,
               shape=tuple(shape), sharding=sharding)

  def constrain(self, x):
    """x (B, ...) placed like the draws (batch-sharded), for a sampler's state."""
    return x if self.sharding is None else jax.lax.with_sharding_constraint(x, self.sharding)

  def draw(self, kind: str = "step"):
    """(xi (B, H, W, C), the source advanced by one).

    `kind` is 'init' for a sampler's initial sample and 'step' for noise added on the way: TDAS's
    `apply_to` colours one, the other or both.
    """
    eps = jax.random.normal(jax.random.fold_in(self.rng, self.counter), self.shape)
    if self.coloring is not None and self.coloring.colors(kind):
      eps = self.coloring(eps)
    return self.constrain(eps), self.skip(1)

  def precondition(self, v):
    """PDS's preconditioned drift D v = M Mᵀ v when TDAS says so (`tdas.precondition_drift`),
    else v: the reverse-diffusion drift and the Langevin gradient go through it."""
    return v if self.coloring is None else self.coloring.precondition_drift(v)

  def initial_mean(self):
    """TDAS's `init_mean` image (H, W, C) to add to the initial sample, or None."""
    return None if self.coloring is None else self.coloring.init_mean

  def skip(self, count: int):
    """The source advanced by `count` draws without making them (keeps a numbering fixed)."""
    return self.replace(counter=self.counter + count)
