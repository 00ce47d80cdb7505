"""TDAS filters (docs/numerics.md §6): the frequency filter R and the space filter A, as arrays.

Filters are built on the host (numpy) once per run and passed into the jitted sampler as arrays,
never baked into its trace. Shapes are (H, W, C), broadcast over the batch.
"""
import numpy as np

from tdas.transforms import check_transform
from errors import UserError

SPACE_MAPS = {
    "sqrt": np.sqrt,
    "identity": lambda m: m,
    "square": np.square,
}


def normalized_radius(height: int, width: int, transform: str = "dct") -> np.ndarray:
  """rho(i, j) in [0, 1] of every frequency index, shape (H, W), float64.

  DCT: sqrt(i² + j²) / sqrt((H-1)² + (W-1)²). DFT: i and j are first folded to their distance from
  the zero frequency, i -> min(i, H - i), and the denominator is sqrt((H/2)² + (W/2)²).
  """
  i, j = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
  if check_transform(transform) == "dft":
    i, j = np.minimum(i, height - i), np.minimum(j, width - j)
    denominator = np.hypot(height / 2, width / 2)
  else:
    denominator = np.hypot(max(height - 1, 1), max(width - 1, 1))
  return np.hypot(i[:, None], j[None, :]) / denominator


def frequency_filter(shape, r1: float, r2: float, lambda1: float, lambda2: float,
                     transform: str = "dct") -> np.ndarray:
  """The zoned frequency filter R, shape (H, W, C) float32.

  R = 1 where rho <= r1, lambda1 where r1 < rho <= r2, lambda2 where rho > r2. The paper's one-zone
  filter is r1 = r2, lambda1 = lambda2. lambda < 1 suppresses high frequencies (VE score models);
  lambda > 1 amplifies them (DDPM-type models).
  """
  height, width, channels = shape
  if not 0 <= r1 <= r2:
    raise UserError(f"The TDAS zones need 0 <= r1 <= r2 (config.sampling.tdas.r1/r2), got "
                     f"r1={r1!r}, r2={r2!r}.")
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
    if not value > 0:
      raise UserError(f"config.sampling.tdas.{name} must be positive, got {value!r}.")
  rho = normalized_radius(height, width, transform)
  zoned = np.where(rho <= r1, 1.0, np.where(rho <= r2, lambda1, lambda2))
  return np.repeat(zoned[:, :, None], channels, axis=2).astype(np.float32)


def radial_bin(rho: np.ndarray, num_bins: int) -> np.ndarray:
  """Index of the radial bin of each rho in [0, 1]: num_bins equal bins, rho = 1 in the last one."""
  return np.minimum((rho * num_bins).astype(np.int64), num_bins - 1)


def radial_profile_filter(shape, profile, transform: str = "dct") -> np.ndarray:
  """A frequency filter with one value per radial bin: R(i, j) = profile[bin(rho(i, j))].

  Args:
    shape: (H, W, C).
    profile: (num_bins,) positive gains over rho in [0, 1], equal-width bins.
  Returns:
    (H, W, C) float32.
  """
  profile = np.asarray(profile, np.float64)
  if profile.ndim != 1 or profile.size == 0 or not np.all(profile > 0):
    raise UserError(f"A radial-profile filter needs a 1-D array of positive gains, got shape "
                     f"{profile.shape} with min {profile.min() if profile.size else None}.")
  height, width, channels = shape
  values = profile[radial_bin(normalized_radius(height, width, transform), profile.size)]
  return np.repeat(values[:, :, None], channels, axis=2).astype(np.float32)


def space_filter(mean_image, f: str = "sqrt", alpha: float = 1.0) -> np.ndarray:
  """The space filter A from the data's mean image m (H, W, C) in [0, 1].

  A0 = f(m) / max f(m); A = (A0 + alpha - 1) / alpha, so A lies in [(alpha - 1) / alpha, 1].
  """
  if f not in SPACE_MAPS:
    raise UserError(f"config.sampling.tdas.space_f={f!r} must be one of {sorted(SPACE_MAPS)}.")
  if not alpha >= 1:
    raise UserError(f"config.sampling.tdas.space_alpha must be >= 1, got {alpha!r}.")
  mean_image = np.asarray(mean_image, np.float64)
  if mean_image.ndim != 3:
    raise UserError(f"The mean image must be (H, W, C), got shape {mean_image.shape}.")
  if np.any(mean_image < 0) or not np.all(np.isfinite(mean_image)):
    raise UserError("The mean image must be finite and in [0, 1] (data scale, not centred).")
  mapped = SPACE_MAPS[f](mean_image)
  if mapped.max() <= 0:
    raise UserError("The mean image is zero everywhere: no space filter can be made from it.")
  a0 = mapped / mapped.max()
  return ((a0 + alpha - 1.0) / alpha).astype(np.float32)


def pds_statistics(images) -> tuple:
  """PDS's raw mask statistics of images (N, H, W, C) in [0, 1] (docs/pds.md §3a).

  Returns (space, freq), each (H, W, C) float64: space = mean(x²) (the second moment, per pixel and
  channel); freq = log(1 + mean |DFT2(x)|²) with the unnormalised DFT and no shift.
  """
  images = np.asarray(images, np.float64)
  power = np.abs(np.fft.fft2(images, axes=(1, 2))) ** 2
  return np.mean(images ** 2, axis=0), np.log1p(np.mean(power, axis=0))


def pds_filter(statistic, alpha: float = 5.0) -> np.ndarray:
  """A PDS mask from its raw statistic (H, W, C) (docs/pds.md §3b), float32.

  m / max m over every channel and position, softened to (m + alpha − 1) / alpha, then inverted:
  values in [1, alpha / (alpha − 1)], 1 where the statistic is largest.
  """
  if not alpha > 1:
    raise UserError(f"config.sampling.tdas.pds_alpha must be > 1, got {alpha!r}.")
  statistic = np.asarray(statistic, np.float64)
  softened = (statistic / statistic.max() + alpha - 1.0) / alpha
  return (1.0 / softened).astype(np.float32)
