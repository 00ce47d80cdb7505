"""Coloured noise: xi = T⁻¹(R ⊙ T(A ⊙ eps)), eps ~ N(0, I) (SEMANTICS §6).

With A = R = 1 the draw is eps exactly, so TDAS with identity filters reproduces the vanilla
sampler sample for sample.
"""
import jax

from tdas.transforms import filter_in_frequency


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
