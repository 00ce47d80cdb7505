"""Frequency statistics of image sets (docs/numerics.md §6; the TDAS paper's Appendix A.2-A.3).

The statistic of a set of images x (N, H, W, C) in a transform T (the orthonormal 2-D DCT-II or
DFT over (H, W), per channel) is the mean amplitude per coordinate,

    S(i, j, c) = E |T(x)(i, j, c)|,      S(i, j) = mean over c of S(i, j, c),

the channel-averaged map the calibration uses. Everything here is float64 numpy on the host:
statistics are computed once per set, not inside a sampler.

- `ImageStatistics` streams S (both transforms) and the mean image over batches, so a set of any
  size passes through in constant memory; `mean_amplitude` is the one-shot form.
- `radial_profile` averages an (H, W) map over radial bins of the normalised radius rho
  (`tdas.filters.normalized_radius`; for the DFT, the folded radius).
- `deviation_ratio(S_accelerated, S_reference)` is the paper's Dev (its Eq. 7): > 1 where the
  accelerated sampler leaves excess amplitude.
- `behaviour_function(S_model, S_data)` is the paper's frequency behaviour function view
  (Appendix A.3): per radial bin, how much a model scales that band relative to the data
  (> 1: amplifies, as VE/NCSN++ models do at high frequencies; < 1: shrinks, as VP/DDPM models do).
"""
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
from scipy import fft as sfft

from tdas import filters as tdas_filters
from tdas.transforms import TRANSFORMS, check_transform
from errors import UserError


def transform_amplitude(images, transform: str = "dct") -> np.ndarray:
  """|T(x)| of images (N, H, W, C) -> (N, H, W, C) float64; T orthonormal over (H, W)."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"Expected images (N, H, W, C), got shape {x.shape}.")
  if check_transform(transform) == "dct":
    return np.abs(sfft.dctn(x, type=2, axes=(1, 2), norm="ortho"))
  return np.abs(sfft.fft2(x, axes=(1, 2), norm="ortho"))


class ImageStatistics:
  """Streamed statistics of an image set: mean image and mean amplitude per DCT/DFT coordinate.

  Feed batches (n, H, W, C) with `update`; every batch must have the same (H, W, C). Memory is
  O(H W C) whatever the number of images; a batch is processed in chunks of `chunk` images so a
  large batch of large images never sits in float64 at once.

  Attributes:
    count: images seen.
    shape: (H, W, C), or None before the first batch.
  """

  def __init__(self, transforms: Sequence[str] = TRANSFORMS, chunk: int = 64):
    self.transforms = tuple(check_transform(t) for t in transforms)
    self.chunk = max(1, int(chunk))
    self.count = 0
    self.shape = None
    self.pixel_sum = None
    self.amplitude_sum = {}

  def update(self, images) -> "ImageStatistics":
    """Adds a batch of images (n, H, W, C) (any real dtype; n may be 0). Returns self."""
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"Expected a batch of images (n, H, W, C), got shape {images.shape}.")
    if self.shape is None:
      self.shape = tuple(images.shape[1:])
      self.pixel_sum = np.zeros(self.shape, np.float64)
      self.amplitude_sum = {t: np.zeros(self.shape, np.float64) for t in self.transforms}
    elif tuple(images.shape[1:]) != self.shape:
      raise ValueError(f"A batch of images {tuple(images.shape[1:])} does not match the "
                       f"earlier ones {self.shape} (H, W, C).")
    for start in range(0, images.shape[0], self.chunk):
      x = images[start:start + self.chunk].astype(np.float64)
      self.pixel_sum += x.sum(axis=0)
      for t in self.transforms:
        self.amplitude_sum[t] += transform_amplitude(x, t).sum(axis=0)
    self.count += images.shape[0]
    return self

  def merge(self, other: "ImageStatistics") -> "ImageStatistics":
    """Adds the sums of another accumulator (same transforms and shape) into this one."""
    if other.count == 0:
      return self
    if self.shape is None:
      self.shape = other.shape
      self.pixel_sum = np.zeros(self.shape, np.float64)
      self.amplitude_sum = {t: np.zeros(self.shape, np.float64) for t in self.transforms}
    if other.shape != self.shape or set(other.transforms) < set(self.transforms):
      raise ValueError(f"Cannot merge statistics of {other.shape} images with transforms "
                       f"{other.transforms} into {self.shape} / {self.transforms}.")
    self.pixel_sum += other.pixel_sum
    for t in self.transforms:
      self.amplitude_sum[t] += other.amplitude_sum[t]
    self.count += other.count
    return self

  def _check_nonempty(self):
    if self.count == 0:
      raise ValueError("No images were given: the statistics of an empty set are undefined.")

  def mean_image(self) -> np.ndarray:
    """The per-pixel, per-channel mean (H, W, C) float64."""
    self._check_nonempty()
    return self.pixel_sum / self.count

  def amplitude(self, transform: str = "dct", average_channels: bool = True) -> np.ndarray:
    """S = E|T(x)|: (H, W) averaged over channels, or (H, W, C) per channel; float64."""
    self._check_nonempty()
    if transform not in self.amplitude_sum:
      raise ValueError(f"These statistics hold the transforms {self.transforms}, not "
                       f"{transform!r}.")
    per_channel = self.amplitude_sum[transform] / self.count
    return per_channel.mean(axis=2) if average_channels else per_channel

  def state(self) -> dict:
    """The sums as arrays (for caching): count, pixel_sum and `<transform>_amplitude_sum`."""
    self._check_nonempty()
    arrays = dict(count=np.asarray(self.count), pixel_sum=self.pixel_sum)
    arrays.update({f"{t}_amplitude_sum": s for t, s in self.amplitude_sum.items()})
    return arrays

  @classmethod
  def from_state(cls, arrays) -> "ImageStatistics":
    """Inverse of `state` (an .npz mapping or dict)."""
    transforms = tuple(t for t in TRANSFORMS if f"{t}_amplitude_sum" in arrays)
    stats = cls(transforms)
    stats.count = int(arrays["count"])
    stats.pixel_sum = np.asarray(arrays["pixel_sum"], np.float64)
    stats.shape = tuple(stats.pixel_sum.shape)
    stats.amplitude_sum = {t: np.asarray(arrays[f"{t}_amplitude_sum"], np.float64)
                           for t in transforms}
    return stats


def image_statistics(batches: Iterable[np.ndarray], transforms: Sequence[str] = TRANSFORMS,
                     progress: Optional[str] = None) -> ImageStatistics:
  """`ImageStatistics` of every batch (n, H, W, C) an iterable yields (tqdm bar if `progress`)."""
  stats = ImageStatistics(transforms)
  if progress is not None:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    batches = tqdm(batches, desc=progress, unit="batch")
  for batch in batches:
    stats.update(batch)
  return stats


def mean_amplitude(images, transform: str = "dct", batch_size: int = 256) -> np.ndarray:
  """S(i, j) = E|T(x)(i, j)| of images (N, H, W, C), averaged over channels -> (H, W) float64.

  Streams over the batch axis in chunks of `batch_size`, so any number of images fits.
  """
  images = np.asarray(images)
  stats = ImageStatistics((transform,), chunk=batch_size)
  return stats.update(images).amplitude(transform)


def radial_profile(values, num_bins: int, transform: str = "dct", return_counts: bool = False):
  """Mean of an (H, W) map per radial bin of rho.

  Bins are `num_bins` equal-width bins of rho in [0, 1] (`tdas.filters.radial_bin`).

  Returns:
    centres (num_bins,), means (num_bins,) and, with `return_counts`, counts (num_bins,) int: the
    number of coordinates per bin. Bins without coordinates (tiny images) get NaN.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2:
    raise UserError(f"radial_profile takes an (H, W) map, got shape {values.shape}.")
  if num_bins < 1:
    raise UserError(f"num_bins={num_bins!r} must be >= 1.")
  rho = tdas_filters.normalized_radius(values.shape[0], values.shape[1], transform)
  bins = tdas_filters.radial_bin(rho, num_bins)
  finite = np.isfinite(values)
  sums = np.bincount(bins[finite], weights=values[finite], minlength=num_bins)
  counts = np.bincount(bins[finite], minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  centres = (np.arange(num_bins) + 0.5) / num_bins
  if return_counts:
    return centres, means, counts
  return centres, means


def deviation_ratio(accelerated, reference, floor: float = 1e-12) -> np.ndarray:
  """Dev = S_accelerated / S_reference per coordinate (any matching shape), float64.

  Coordinates where the reference amplitude is below `floor` (e.g. every non-DC coefficient of a
  constant image) carry no information and are NaN; `radial_profile` and the fits skip them.
  """
  accelerated = np.asarray(accelerated, np.float64)
  reference = np.asarray(reference, np.float64)
  if accelerated.shape != reference.shape:
    raise ValueError(f"The two amplitude maps differ in shape: {accelerated.shape} (accelerated) "
                     f"and {reference.shape} (reference).")
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(reference > floor, accelerated / np.where(reference > floor, reference, 1.0),
                    np.nan)


def behaviour_function(model_amplitude, data_amplitude, num_bins: int,
                       transform: str = "dct") -> Tuple[np.ndarray, np.ndarray]:
  """The paper's frequency behaviour function: how a model scales each band relative to the data.

  Args:
    model_amplitude: (H, W) S of the model's samples (in the data's scale, [0, 1]).
    data_amplitude: (H, W) S of the data set (`--mode stats` writes it).
    num_bins: radial bins over rho in [0, 1].
    transform: the transform of both maps ('dct' or 'dft').
  Returns:
    (centres (num_bins,), B (num_bins,)): B = mean of S_model / S_data over each radial bin.
    B > 1 where the model amplifies a band (NCSN++: increasing in rho), < 1 where it shrinks it
    (DDPM-type models). The calibration's Dev is the same ratio with the full-step sampler in
    place of the data.
  """
  return radial_profile(deviation_ratio(model_amplitude, data_amplitude), num_bins, transform)


def log_amplitude(values, floor: float = 1e-8) -> np.ndarray:
  """log10 of an amplitude map, floored so empty coordinates stay finite (for plots)."""
  return np.log10(np.maximum(np.asarray(values, np.float64), floor))
