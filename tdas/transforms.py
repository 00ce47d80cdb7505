"""Orthonormal 2-D transforms over the image axes (H, W) of NHWC arrays (or HWC images).

`dct2`/`idct2` are the type-II DCT and its inverse with `norm="ortho"`, per channel; the DFT
variant of TDAS filters through `fft2`/`ifft2` and keeps the real part (docs/numerics.md §6).
"""
import jax.numpy as jnp
from jax.scipy import fft as jfft
from errors import UserError

# Image axes of (..., H, W, C).
IMAGE_AXES = (-3, -2)
TRANSFORMS = ("dct", "dft")


def dct2(x):
  """Orthonormal 2-D DCT-II over (H, W) of x (..., H, W, C); same shape."""
  return jfft.dctn(x, type=2, axes=IMAGE_AXES, norm="ortho")


def idct2(coefficients):
  """Inverse of `dct2`: (..., H, W, C) DCT coefficients -> image."""
  return jfft.idctn(coefficients, type=2, axes=IMAGE_AXES, norm="ortho")


def dft2(x):
  """Orthonormal 2-D DFT over (H, W) of x (..., H, W, C); complex, same shape."""
  return jnp.fft.fft2(x, axes=IMAGE_AXES, norm="ortho")


def idft2(coefficients):
  """Inverse of `dft2` (complex result)."""
  return jnp.fft.ifft2(coefficients, axes=IMAGE_AXES, norm="ortho")


def check_transform(transform: str) -> str:
  if transform not in TRANSFORMS:
    raise UserError(f"config.sampling.tdas.transform={transform!r} must be one of {TRANSFORMS}.")
  return transform


def filter_in_frequency(x, freq, transform: str = "dct"):
  """Multiplies the spectrum of x (..., H, W, C) by `freq` (H, W, C): T⁻¹(freq ⊙ T(x)), real."""
  if check_transform(transform) == "dct":
    return idct2(freq * dct2(x))
  return jnp.real(idft2(freq * dft2(x))).astype(x.dtype)
