"""Fits TDAS's frequency filter to frequency statistics (docs/numerics.md §6; the paper's Appendix A.2).

Given the mean-amplitude maps S_full (the vanilla sampler at the full N) and S_accelerated (at N'),
both (H, W) from `tdas.stats`, the deviation ratio is Dev = S_accelerated / S_full and the filter
should undo it. Three fits, all with lambda = 1 / mean(Dev over the zone's coordinates):

- `fit_zoned_filter` ('zones'): r1 <= r2 chosen by least squares of the zoned profile
  R(rho) (1 below r1, lambda1 up to r2, lambda2 beyond) against 1 / Dev over every coordinate.
- `fit_quantile_filter` ('quantile', the paper's rule): r1 and r2 are fixed quantiles of the
  coordinates' radii, q = 0.25 and 0.33. That reproduces the radii of every DFT row of the paper's
  Table 4 (0.400 / 0.455 at 32 px, 0.398 / 0.456 at CelebA's 64 px); the paper's equations did not
  survive, so this is our reading of its "quantile" rule.
- `fit_radial_gains` ('radial'): one gain 1 / Dev per radial bin, the natural generalisation
  (`tdas.filters.radial_profile_filter`).

lambda > 1 is allowed everywhere: VP/DDPM models shrink high frequencies under acceleration
(Dev < 1) and need amplification (the paper's Appendix A.3). Gains are clipped to
[1 / max_gain, max_gain] only to keep a degenerate statistic from producing an absurd filter.

`mean_amplitude` and `radial_profile` live in `tdas.stats` and are re-exported here.
"""
from typing import Optional, Sequence

import numpy as np

from tdas import filters as tdas_filters
from tdas import stats
from tdas.stats import mean_amplitude, radial_profile  # pylint: disable=unused-import
from tdas.transforms import check_transform
from errors import UserError

METHODS = ("zones", "quantile", "radial")  # fits of Dev = S(N') / S(N)
# Filters made from the data set, without sampling: PDS's masks (docs/pds.md §3).
DATA_METHODS = ("pds",)
# The paper's radius quantiles (see the module docstring).
PAPER_QUANTILES = (0.25, 0.33)


def _valid_coordinates(deviation, transform):
  """(rho, Dev) of the coordinates with a finite positive Dev, both 1-D float64."""
  deviation = np.asarray(deviation, np.float64)
  if deviation.ndim != 2:
    raise ValueError(f"Expected an (H, W) deviation map, got shape {deviation.shape}.")
  rho = tdas_filters.normalized_radius(deviation.shape[0], deviation.shape[1], transform)
  valid = np.isfinite(deviation) & (deviation > 0)
  if not valid.any():
    raise ValueError("The deviation map has no finite positive value: the two sample sets carry "
                     "no comparable amplitude (are they all constant?).")
  return rho[valid], deviation[valid]


def _clip_gain(value, max_gain):
  return float(np.clip(value, 1.0 / max_gain, max_gain))


def fit_zoned_filter(deviation, transform: str = "dct", num_candidates: int = 256,
                     max_gain: float = 10.0) -> dict:
  """Least-squares zoned filter for a deviation map.

  Every pair r1 <= r2 on a grid of `num_candidates + 1` radii over [0, 1] is tried; inside a
  zone lambda = 1 / mean(Dev over its coordinates) (1 below r1), and the pair that minimises
  sum over coordinates of (R(rho) - 1 / Dev)² wins. Cumulative sums make each pair O(1).

  Args:
    deviation: (H, W) Dev map; NaN / non-positive coordinates are ignored.
    transform: 'dct' or 'dft' (how rho is measured).
    num_candidates: resolution of the radius grid.
    max_gain: lambdas are clipped to [1 / max_gain, max_gain].
  Returns:
    dict(r1, r2, lambda1, lambda2, residual): residual is the mean squared error per coordinate.
  """
  rho, dev = _valid_coordinates(deviation, check_transform(transform))
  order = np.argsort(rho, kind="stable")
  rho, dev = rho[order], dev[order]
  target = 1.0 / dev
  grid = np.linspace(0.0, 1.0, int(num_candidates) + 1)
  # Coordinates with rho <= grid[k] are the first cut[k] of the sorted list.
  cut = np.searchsorted(rho, grid, side="right")
  cut[-1] = rho.size  # rho <= 1 always; guard against rounding

  def cumulative(values):
    return np.concatenate([[0.0], np.cumsum(values)])[cut]

  count, dev_sum = cut.astype(np.float64), cumulative(dev)
  t_sum, t_squares = cumulative(target), cumulative(target ** 2)
  a, b = np.triu_indices(grid.size)  # zone boundaries: inner [0, a], middle (a, b], outer (b, 1]

  def zone(lo, hi):
    n = count[hi] - count[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
      gain = np.where(n > 0, n / np.where(n > 0, dev_sum[hi] - dev_sum[lo], 1.0), 1.0)
    gain = np.clip(gain, 1.0 / max_gain, max_gain)
    s, s2 = t_sum[hi] - t_sum[lo], t_squares[hi] - t_squares[lo]
    return gain, s2 - 2.0 * gain * s + gain ** 2 * n

  last = np.full_like(b, grid.size - 1)
  inner = t_squares[a] - 2.0 * t_sum[a] + count[a]       # value 1 below r1
  lambda1, middle = zone(a, b)
  lambda2, outer = zone(b, last)
  residual = inner + middle + outer
  best = int(np.argmin(residual))
  return dict(r1=float(grid[a[best]]), r2=float(grid[b[best]]),
              lambda1=float(lambda1[best]), lambda2=float(lambda2[best]),
              residual=float(residual[best] / rho.size))


def fit_quantile_filter(deviation, transform: str = "dct",
                        quantiles: Sequence[float] = PAPER_QUANTILES,
                        max_gain: float = 10.0) -> dict:
  """The paper's quantile rule: r1, r2 = quantiles q1 <= q2 of the radii of all coordinates;
  lambda1 = 1 / mean(Dev over r1 < rho <= r2), lambda2 = 1 / mean(Dev over rho > r2).

  Args:
    deviation: (H, W) Dev map (NaN coordinates are ignored in the means, not in the radii).
    quantiles: (q1, q2) in [0, 1]; (0.25, 0.33) reproduces Table 4's DFT radii.
  Returns:
    dict(r1, r2, lambda1, lambda2).
  """
  transform = check_transform(transform)
  q1, q2 = (float(q) for q in quantiles)
  if not 0.0 <= q1 <= q2 <= 1.0:
    raise UserError(f"config.calibrate.quantiles={tuple(quantiles)!r} must satisfy "
                     "0 <= q1 <= q2 <= 1.")
  deviation = np.asarray(deviation, np.float64)
  all_rho = tdas_filters.normalized_radius(deviation.shape[0], deviation.shape[1], transform)
  r1, r2 = (float(r) for r in np.quantile(all_rho.ravel(), [q1, q2]))
  rho, dev = _valid_coordinates(deviation, transform)
  middle, outer = (rho > r1) & (rho <= r2), rho > r2
  lambda1 = _clip_gain(1.0 / dev[middle].mean(), max_gain) if middle.any() else 1.0
  lambda2 = _clip_gain(1.0 / dev[outer].mean(), max_gain) if outer.any() else 1.0
  return dict(r1=r1, r2=r2, lambda1=lambda1, lambda2=lambda2)


def fit_radial_gains(deviation, num_bins: int, transform: str = "dct",
                     max_gain: float = 10.0) -> np.ndarray:
  """One gain per radial bin: 1 / mean(Dev over the bin's coordinates) -> (num_bins,) float64.

  Bins without valid coordinates (tiny images) take the gain of the nearest bin that has one.
  Feed the result to `tdas.filters.radial_profile_filter`.
  """
  _, profile = radial_profile(deviation, num_bins, transform)
  valid = np.isfinite(profile) & (profile > 0)
  if not valid.any():
    raise ValueError("The deviation map has no finite positive value in any radial bin.")
  index = np.arange(num_bins)
  nearest = index[valid][np.argmin(np.abs(index[:, None] - index[valid][None, :]), axis=1)]
  return np.clip(1.0 / profile[nearest], 1.0 / max_gain, max_gain)


def fit_one_zone_filter(centres, deviation, tolerance: float = 0.01) -> dict:
  """A one-zone rule on a radial profile: r where Dev first departs from 1 by more than
  `tolerance` (after which it stays departed), lambda = 1 / mean(Dev beyond r).

  Args:
    centres, deviation: (K,) a radial profile of Dev (`radial_profile`); NaN bins are ignored.
  Returns:
    dict(r, lambda, identity): `identity` True when no outer band departs (the last bin's Dev
    is within `tolerance` of 1): r = 1, lambda = 1 is then the identity filter, not a fit.
  """
  centres, deviation = np.asarray(centres, np.float64), np.asarray(deviation, np.float64)
  valid = np.isfinite(deviation) & (deviation > 0)
  centres, deviation = centres[valid], deviation[valid]
  departed = np.abs(deviation - 1.0) > tolerance
  # The first bin from which every later bin has departed.
  start = len(departed)
  while start > 0 and departed[start - 1]:
    start -= 1
  if start == len(departed):
    return dict(r=1.0, identity=True, **{"lambda": 1.0})
  r = 0.0 if start == 0 else float((centres[start - 1] + centres[start]) / 2)
  return dict(r=r, identity=False, **{"lambda": float(1.0 / np.mean(deviation[start:]))})


def check_method(method: str, allowed=METHODS + DATA_METHODS) -> str:
  if method not in allowed:
    raise UserError(f"config.calibrate.method={method!r} must be one of {tuple(allowed)}.")
  return method


def calibrate_frequency_filter(reference_amplitude, accelerated_amplitude, num_channels: int,
                               transform: str = "dct", method: str = "zones", num_bins: int = 16,
                               quantiles: Sequence[float] = PAPER_QUANTILES,
                               max_gain: float = 10.0,
                               num_candidates: Optional[int] = None) -> dict:
  """Every fit of the frequency filter from two amplitude maps, and the filter `method` selects.

  Args:
    reference_amplitude: (H, W) S of the vanilla sampler at the full N.
    accelerated_amplitude: (H, W) S of the vanilla sampler at N'.
    num_channels: C of the filter.
    transform: 'dct' or 'dft' (the maps' transform, and the filter's).
    method: 'zones' | 'quantile' | 'radial': which fit becomes `freq`.
    num_bins: radial bins of the profile and of the radial filter.
    quantiles: (q1, q2) of the quantile rule.
    max_gain: gains are clipped to [1 / max_gain, max_gain].
    num_candidates: radius grid of the least-squares fit (default max(256, 16 num_bins)).
  Returns:
    dict with `deviation` (H, W), `centres` / `profile` / `counts` (num_bins,) (the radial
    profile of Dev), `zones`, `quantile` (dicts r1, r2, lambda1, lambda2), `one_zone` (r,
    lambda), `radial_gains` (num_bins,), `method` and `freq` (H, W, C) float32, the chosen filter.
  """
  transform, method = check_transform(transform), check_method(method, METHODS)
  deviation = stats.deviation_ratio(accelerated_amplitude, reference_amplitude)
  height, width = deviation.shape
  shape = (height, width, int(num_channels))
  centres, profile, counts = radial_profile(deviation, num_bins, transform, return_counts=True)
  zones = fit_zoned_filter(deviation, transform, num_candidates or max(256, 16 * num_bins),
                           max_gain)
  quantile = fit_quantile_filter(deviation, transform, quantiles, max_gain)
  gains = fit_radial_gains(deviation, num_bins, transform, max_gain)
  if method == "radial":
    freq = tdas_filters.radial_profile_filter(shape, gains, transform)
  else:
    fit = zones if method == "zones" else quantile
    freq = tdas_filters.frequency_filter(shape, fit["r1"], fit["r2"], fit["lambda1"],
                                         fit["lambda2"], transform)
  return dict(deviation=deviation, centres=centres, profile=profile, counts=counts, zones=zones,
              quantile=quantile, one_zone=fit_one_zone_filter(centres, profile),
              radial_gains=gains, method=method, transform=transform, freq=freq)
