"""Coloured noise: xi = T⁻¹(R ⊙ T(A ⊙ eps)), eps ~ N(0, I) (SEMANTICS §6).

With A = R = 1 the draw is eps exactly, so TDAS with identity filters reproduces the vanilla
sampler sample for sample.
"""
from typing import Optional

import jax
from flax import struct

from tdas.transforms import filter_in_frequency

# Which of a sampler's draws TDAS colours (`config.sampling.tdas.apply_to`).
APPLY_TO = ("init", "noise", "both")


def color(eps, space=None, freq=None, transform: str = "dct"):
  """Colours white noise eps (..., H, W, C) with the space filter A and frequency filter R.

  Either filter may be None (switched off). Both are (H, W, C) arrays broadcast over the batch.
  """
  xi = eps if space is None else space * eps
  if freq is not None:
    xi = filter_in_frequency(xi, freq, transform)
  return xi


def colored_noise(key, shape, space=None, freq=None, transform: str = "dct"):
  """A coloured draw of the given `shape` (B, H, W, C); see `color`."""
  return color(jax.random.normal(key, shape), space, freq, transform)


@struct.dataclass
class Coloring:
  """What the jitted samplers see of TDAS: the filter arrays and the static choices.

  A pytree: `space` and `freq` ((H, W, C) arrays, or None for a filter that is off) are traced
  arguments of the compiled sampler, never constants in it; `transform` and `apply_to` are part of
  the compiled program.
  """
  space: Optional[jax.Array]
  freq: Optional[jax.Array]
  init_mean: Optional[jax.Array] = None  # (H, W, C) in model space, added to the initial sample
  transform: str = struct.field(pytree_node=False, default="dct")
  apply_to: str = struct.field(pytree_node=False, default="both")

  def __post_init__(self):
    if self.apply_to not in APPLY_TO:
      raise ValueError(f"config.sampling.tdas.apply_to={self.apply_to!r} must be one of "
                       f"{APPLY_TO}.")

  def colors(self, kind: str) -> bool:
    """Whether draws of `kind` ('init': the initial sample, 'step': the noise added on the way)
    are coloured."""
    return self.apply_to in (("init", "both") if kind == "init" else ("noise", "both"))

  def __call__(self, eps):
    """The coloured draw xi of a white draw eps (B, H, W, C)."""
    return color(eps, self.space, self.freq, self.transform)
