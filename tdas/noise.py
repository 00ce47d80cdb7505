"""Coloured noise: xi = T⁻¹(R ⊙ T(A ⊙ eps)), eps ~ N(0, I) (docs/numerics.md §6).

With A = R = 1 the draw is eps exactly, so TDAS with identity filters reproduces the vanilla
sampler sample for sample.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from tdas.transforms import dct2, dft2, filter_in_frequency, idct2, idft2

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
  the compiled program. Built by `tdas.settings.TDAS.coloring()`, which has checked them (so
  nothing is re-checked each time jit unflattens it).
  """
  space: Optional[jax.Array]
  freq: Optional[jax.Array]
  init_mean: Optional[jax.Array] = None  # (H, W, C) in model space, added to the initial sample
  transform: str = struct.field(pytree_node=False, default="dct")
  apply_to: str = struct.field(pytree_node=False, default="both")
  # PDS (Ma et al., "Preconditioned Diffusion Sampling"): also precondition the drift.
  precondition: bool = struct.field(pytree_node=False, default=False)

  def colors(self, kind: str) -> bool:
    """Whether draws of `kind` ('init': the initial sample, 'step': the noise added on the way,
    'forward': the forward-process noise of known pixels when conditioning, never coloured)
    are coloured."""
    if kind == "forward":
      return False
    return self.apply_to in (("init", "both") if kind == "init" else ("noise", "both"))

  def __call__(self, eps):
    """The coloured draw xi of a white draw eps (B, H, W, C)."""
    return color(eps, self.space, self.freq, self.transform)

  def precondition_drift(self, v):
    """D v = T⁻¹(R ⊙ T(A² ⊙ T⁻¹(R ⊙ T(v)))) (B, H, W, C), = M Mᵀ v for the colouring M.

    PDS's drift operator (docs/pds.md §0): for the DFT the inner T⁻¹(R ⊙ T(v)) stays complex and
    only the result is made real, as PDS's code does. Identity unless `precondition` is set.
    """
    if not self.precondition:
      return v
    freq = 1.0 if self.freq is None else self.freq
    square = 1.0 if self.space is None else self.space ** 2
    if self.transform == "dct":
      return idct2(freq * dct2(square * idct2(freq * dct2(v))))
    inner = idft2(freq * dft2(v))  # complex, as PDS keeps it
    return jnp.real(idft2(freq * dft2(square * inner))).astype(v.dtype)
