"""Frequency statistics and the fit of TDAS's frequency filter to them (SEMANTICS §6).

The statistic of a set of images is the mean amplitude per DCT (or DFT) coordinate,
S(i, j) = E|T(x)(i, j)|, averaged over channels. The deviation ratio of an accelerated sampler is
Dev = S_accelerated / S_full, and the filter should undo it: inside a zone lambda = 1 / mean(Dev).
"""
import numpy as np

from tdas import filters as tdas_filters


def mean_amplitude(images, transform: str = "dct", batch_size: int = 256) -> np.ndarray:
  """S(i, j) = E|T(x)(i, j)| over images (N, H, W, C), averaged over channels -> (H, W) float64.

  Streams over the batch axis so any number of images fits in memory.
  """
  from scipy import fft as sfft  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  total = np.zeros(images.shape[1:3], np.float64)
  for start in range(0, images.shape[0], batch_size):
    x = images[start:start + batch_size].astype(np.float64)
    if transform == "dct":
      coefficients = sfft.dctn(x, type=2, axes=(1, 2), norm="ortho")
    else:
      coefficients = sfft.fft2(x, axes=(1, 2), norm="ortho")
    total += np.abs(coefficients).mean(axis=3).sum(axis=0)
  return total / images.shape[0]


def radial_profile(values, num_bins: int, transform: str = "dct"):
  """Mean of an (H, W) map per radial bin of rho -> (bin centres (num_bins,), means (num_bins,)).

  Bins without coordinates (possible for tiny images) get NaN.
  """
  values = np.asarray(values, np.float64)
  rho = tdas_filters.normalized_radius(values.shape[0], values.shape[1], transform)
  bins = tdas_filters.radial_bin(rho, num_bins)
  sums = np.bincount(bins.ravel(), weights=values.ravel(), minlength=num_bins)
  counts = np.bincount(bins.ravel(), minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    means = sums / counts
  centres = (np.arange(num_bins) + 0.5) / num_bins
  return centres, means


def fit_zoned_filter(centres, deviation, max_zone_gain: float = 10.0):
  """Least-squares zoned filter for a radial deviation profile.

  Chooses r1 <= r2 among the bin edges and lambda1, lambda2 = 1 / mean(Dev) inside their zones
  (1 below r1) to minimise the squared error between the zoned profile and 1 / Dev over radius.

  Args:
    centres: (K,) bin centres in [0, 1] (from `radial_profile`).
    deviation: (K,) Dev per bin; NaN bins are ignored.
    max_zone_gain: lambdas are clipped to [1 / max_zone_gain, max_zone_gain].
  Returns:
    dict(r1, r2, lambda1, lambda2, residual).
  """
  centres, deviation = np.asarray(centres, np.float64), np.asarray(deviation, np.float64)
  valid = np.isfinite(deviation) & (deviation > 0)
  centres, target = centres[valid], 1.0 / deviation[valid]
  edges = np.concatenate([[0.0], (centres[:-1] + centres[1:]) / 2, [1.0]])
  best = None
  for a in range(len(edges)):
    for b in range(a, len(edges)):
      r1, r2 = edges[a], edges[b]
      inner, middle, outer = centres <= r1, (centres > r1) & (centres <= r2), centres > r2
      lambda1 = float(np.mean(target[middle])) if middle.any() else 1.0
      lambda2 = float(np.mean(target[outer])) if outer.any() else 1.0
      lambda1, lambda2 = (float(np.clip(v, 1 / max_zone_gain, max_zone_gain))
                          for v in (lambda1, lambda2))
      profile = np.where(inner, 1.0, np.where(middle, lambda1, lambda2))
      residual = float(np.sum((profile - target) ** 2))
      if best is None or residual < best["residual"] - 1e-12:
        best = dict(r1=float(r1), r2=float(r2), lambda1=lambda1, lambda2=lambda2,
                    residual=residual)
  return best


def fit_one_zone_filter(centres, deviation, tolerance: float = 0.01):
  """The paper's one-zone rule: r where Dev first departs from 1 by more than `tolerance`
  (after which it stays departed), lambda = 1 / mean(Dev beyond r). Returns dict(r, lambda)."""
  centres, deviation = np.asarray(centres, np.float64), np.asarray(deviation, np.float64)
  valid = np.isfinite(deviation) & (deviation > 0)
  centres, deviation = centres[valid], deviation[valid]
  departed = np.abs(deviation - 1.0) > tolerance
  # The first bin from which every later bin has departed.
  start = len(departed)
  while start > 0 and departed[start - 1]:
    start -= 1
  if start == len(departed):
    return dict(r=1.0, **{"lambda": 1.0})
  r = 0.0 if start == 0 else float((centres[start - 1] + centres[start]) / 2)
  return dict(r=r, **{"lambda": float(1.0 / np.mean(deviation[start:]))})
