"""The file formats of TDAS and of the data statistics: one writer and one reader per format.

- filter file `filters_<N'>.npz` (`--mode calibrate`): `space`, `freq` (H, W, C) float32 and
  `info`, a JSON string saying how they were made;
- space file `space_<stem>.npz` (`--mode stats`): `mean` (H, W, C) in [0, 1], `space`, `space_f`,
  `space_alpha`, `num_images`;
- frequency file `frequency_<stem>.npz` (`--mode stats`): `dct_amplitude`, `dft_amplitude`
  (H, W), the same per channel, `num_images`;
- analytic target `analytic_<stem>.npz` (`--mode stats`): `mean`, `dct_variance` (H, W, C),
  `num_images`;
- calibration cache `batch_<k>.npz` (`--mode calibrate`): a `tdas.stats.ImageStatistics` state,
  and `preview` uint8 for batch 0;
- PDS masks `pds_space_<stem>.npy`, `pds_freq_<stem>.npy` (`tools/pds_masks.py`, or PDS's own
  `mask_gen_demo.py`): raw statistics (C, H, W) float32, channels first as PDS writes them.

Every writer is atomic (`atomic_io`); every reader checks what it reads against the config and
raises one error naming the file (and the config field that named it). Nothing else in the
project opens these files: the samplers take arrays.
"""
import json
import os
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np

import atomic_io
from tdas import stats as tdas_stats
from errors import MissingFileError, UserError


class FilterFileError(UserError):
  """A filter file that is missing, unreadable or does not fit the config."""


def _read_npz(path: str, what: str) -> Dict[str, np.ndarray]:
  """Every array of an `.npz`; a damaged file is a ValueError naming it as `what`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
    raise UserError(f"{what} {path!r} is not a readable .npz: {type(error).__name__}: "
                     f"{error}") from error


def _check_values(array, path, name, what, rule, valid, fix):
  """Raises UserError naming the file, the array and how many values break `rule` (a sentence
  such as 'finite and positive'); `valid(array)` is the elementwise test of the rule."""
  with np.errstate(invalid="ignore"):
    bad = ~(np.isfinite(array) & valid(array))
  if np.any(bad):
    nan = int(np.sum(np.isnan(array)))
    detail = f"{int(bad.sum())} of {array.size} values are not ({nan} NaN)"
    raise UserError(f"{what} {path!r}: `{name}` must be {rule}; {detail}: {fix}.")


def _check_shape(array, shape, path, name, what):
  if shape is not None and tuple(array.shape) != tuple(shape):
    raise UserError(f"{what} {path!r}: `{name}` has shape {tuple(array.shape)} but the config's "
                     f"images are {tuple(shape)} (data.image_size, data.num_channels).")


# --- filter file (config.sampling.tdas.filter_file) -----------------------------------------

def save_filters(path: str, space, freq, info: dict) -> None:
  """Writes `space`, `freq` (each (H, W, C)) and `info` (how they were made) to `path`."""
  space, freq = np.asarray(space, np.float32), np.asarray(freq, np.float32)
  if space.shape != freq.shape or space.ndim != 3:
    raise ValueError(f"space {space.shape} and freq {freq.shape} must both be (H, W, C).")
  atomic_io.atomic_savez(path, compressed=False, space=space, freq=freq,
                         info=np.asarray(json.dumps(info)))


def load_filters(path: str, shape=None):
  """Reads a filter file. Returns (space, freq, info).

  Args:
    path: the `.npz` (`config.sampling.tdas.filter_file`).
    shape: the expected (H, W, C) = (data.image_size, data.image_size, data.num_channels).
  """
  if not os.path.isfile(path):
    raise FilterFileError(f"TDAS filter file {path!r} (config.sampling.tdas.filter_file) does not "
                          "exist; make one with --mode calibrate or clear the field.")
  try:
    contents = _read_npz(path, "TDAS filter file (config.sampling.tdas.filter_file)")
  except ValueError as error:
    raise FilterFileError(str(error)) from error
  missing = [k for k in ("space", "freq", "info") if k not in contents]
  if missing:
    raise FilterFileError(f"TDAS filter file {path!r} (config.sampling.tdas.filter_file) lacks "
                          f"{missing} (it holds {sorted(contents)}): make it with --mode "
                          "calibrate.")
  space, freq = contents["space"].astype(np.float32), contents["freq"].astype(np.float32)
  for name, array in (("space", space), ("freq", freq)):
    try:
      _check_shape(array, shape, path, name, "TDAS filter file")
    except ValueError as error:
      raise FilterFileError(str(error)) from None
    # A space filter may be 0 (space_alpha = 1 where the data's mean is 0, e.g. a digit's
    # border); the frequency filter's gains must be positive.
    kind, valid = (("non-negative", lambda a: a >= 0) if name == "space"
                   else ("positive", lambda a: a > 0))
    try:
      _check_values(array, path, name, "TDAS filter file (config.sampling.tdas.filter_file)",
                    f"finite and {kind}", valid, "make it again with --mode calibrate")
    except UserError as error:
      raise FilterFileError(str(error)) from None
  try:
    info = json.loads(str(contents["info"]))
  except json.JSONDecodeError as e:
    raise FilterFileError(f"TDAS filter file {path!r} (config.sampling.tdas.filter_file): `info` "
                          f"is not JSON ({e}): make it again with --mode calibrate.") from e
  return space, freq, info


# --- space file (config.sampling.tdas.space_file) -------------------------------------------

def save_space(path: str, mean, space, space_f: str, space_alpha: float, num_images: int):
  """Writes the data's mean image (H, W, C) in [0, 1] and the space filter made from it."""
  atomic_io.atomic_savez(path, mean=np.asarray(mean, np.float32), space=space,
                         space_f=np.asarray(space_f), space_alpha=np.asarray(space_alpha),
                         num_images=np.asarray(num_images))


def read_mean_image(path: str, shape) -> np.ndarray:
  """The data's mean image (H, W, C) in [0, 1], float64, from a space file (key `mean`) or an
  image file (PNG/JPEG)."""
  if not os.path.isfile(path):
    raise MissingFileError(f"config.sampling.tdas.space_file={path!r} does not exist (make it "
                            "with --mode stats, or clear the field to run without a space filter).")
  label = "Space file (config.sampling.tdas.space_file)"
  if path.endswith(".npz"):
    contents = _read_npz(path, label)
    if "mean" not in contents:
      raise UserError(f"{label} {path!r} has no `mean` array (it holds {sorted(contents)}): "
                      "make it with --mode stats.")
    mean = np.asarray(contents["mean"], np.float64)
  else:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with Image.open(path) as picture:
        mean = np.asarray(picture.convert("RGB" if shape[2] == 3 else "L"), np.float64) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for a damaged picture
      raise UserError(f"{label} {path!r} is not a readable image: {type(error).__name__}: "
                      f"{error}") from error
    mean = mean.reshape(mean.shape[0], mean.shape[1], -1)
  if tuple(mean.shape) != tuple(shape):
    raise UserError(f"{label} {path!r} holds a {mean.shape} mean image; the config's images "
                     f"are {tuple(shape)}.")
  _check_values(mean, path, "mean", label, "finite and in [0, 1] (data scale, not centred)",
                lambda a: (a >= 0) & (a <= 1), "make it again with --mode stats")
  return mean


# --- frequency file (config.calibrate.data_stats_file, config.eval.frequency_stats_file) -----

_AMPLITUDE_KEYS = {"dct": "dct_amplitude", "dft": "dft_amplitude"}


def save_frequency(path: str, statistics: "tdas_stats.ImageStatistics"):
  """Writes the mean DCT and DFT amplitude maps of a data set (channel average and per channel)."""
  atomic_io.atomic_savez(
      path, dct_amplitude=statistics.amplitude("dct"), dft_amplitude=statistics.amplitude("dft"),
      dct_amplitude_per_channel=statistics.amplitude("dct", average_channels=False),
      dft_amplitude_per_channel=statistics.amplitude("dft", average_channels=False),
      num_images=np.asarray(statistics.count))


def read_frequency(path: str, field: str, image_size: Optional[Tuple[int, int]] = None,
                   transform: Optional[str] = None) -> Dict[str, np.ndarray]:
  """The data's mean-amplitude maps {transform: (H, W) float64} from a frequency file.

  Args:
    path: the `.npz`.
    field: the config field that named it (for the error messages).
    image_size: the expected (H, W), or None.
    transform: 'dct' or 'dft' when the caller needs that map; None takes what the file holds.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"{field}={path!r} does not exist: make it with `--mode stats`, or "
                            "clear the field.")
  label = f"Frequency statistics file ({field})"
  contents = _read_npz(path, label)
  wanted = _AMPLITUDE_KEYS if transform is None else {transform: _AMPLITUDE_KEYS[transform]}
  maps = {t: np.asarray(contents[k], np.float64) for t, k in wanted.items() if k in contents}
  if not maps or (transform is not None and transform not in maps):
    expected = " and/or ".join(f"`{k}`" for k in wanted.values())
    raise UserError(f"{label} {path!r} holds {sorted(contents)}; expected {expected} (H, W).")
  for name, amplitude in maps.items():
    if amplitude.ndim == 3:  # per channel: the statistics use the channel average
      maps[name] = amplitude = amplitude.mean(axis=2)
    if amplitude.ndim != 2:
      raise UserError(f"{label} {path!r}: `{_AMPLITUDE_KEYS[name]}` has shape {amplitude.shape}; "
                       "expected (H, W).")
    if image_size is not None and amplitude.shape != tuple(image_size):
      raise UserError(f"{label} {path!r} is for {amplitude.shape} images; the config's are "
                       f"{tuple(image_size)}.")
    _check_values(amplitude, path, _AMPLITUDE_KEYS[name], label, "finite and non-negative",
                  lambda a: a >= 0, "make it again with --mode stats")
  return maps


# --- analytic target (config.model.target_file) ---------------------------------------------

def save_analytic_target(path: str, mean, dct_variance, num_images: int):
  """Writes a fitted Gaussian: per-pixel `mean` and per-DCT-coefficient `dct_variance` (H, W, C)."""
  atomic_io.atomic_savez(path, mean=mean, dct_variance=dct_variance,
                         num_images=np.asarray(num_images))


def read_analytic_target(path: str, shape) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, dct_variance), each (H, W, C) float32, from an analytic target file.

  `shape` is the config's (H, W, C); a missing file, missing keys, a shape mismatch or negative
  variances are a ValueError / FileNotFoundError naming the file.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"config.model.target_file={path!r} does not exist (make one with "
                            "--mode stats, or clear the field for the power-law target).")
  label = "Analytic target file (config.model.target_file)"
  contents = _read_npz(path, label)
  missing = [k for k in ("mean", "dct_variance") if k not in contents]
  if missing:
    raise UserError(f"{label} {path!r} lacks {missing} (it holds {sorted(contents)}): make it "
                    "with --mode stats.")
  mean = np.asarray(contents["mean"], np.float32)
  dct_variance = np.asarray(contents["dct_variance"], np.float32)
  for name, array in (("mean", mean), ("dct_variance", dct_variance)):
    _check_shape(array, shape, path, name, label)
  fix = "make it again with --mode stats"
  _check_values(mean, path, "mean", label, "finite", lambda a: np.ones(a.shape, bool), fix)
  _check_values(dct_variance, path, "dct_variance", label, "finite and non-negative",
                lambda a: a >= 0, fix)
  return mean, dct_variance


# --- calibration cache (<workdir>/calibration/cache/<set>/batch_<k>.npz) --------------------

def save_statistics_batch(path: str, statistics: "tdas_stats.ImageStatistics", preview=None):
  """Writes one batch's frequency statistics (and, for batch 0, a uint8 preview)."""
  arrays = statistics.state()
  if preview is not None:
    arrays["preview"] = preview
  atomic_io.atomic_savez(path, **arrays)


def read_statistics_batch(path: str, shape=None):
  """(ImageStatistics, preview uint8 or None) of a cached batch.

  A file that does not read back whole, lacks the sums, holds non-finite sums or sums of images
  of another (H, W, C) than `shape` raises UserError naming it (the caller samples the batch
  again: the cache is the program's own, never the user's input)."""
  contents = _read_npz(path, "Calibration cache file")
  try:
    statistics = tdas_stats.ImageStatistics.from_state(contents)
  except (KeyError, TypeError, ValueError) as error:
    raise UserError(f"Calibration cache file {path!r} lacks its sums ({error}).") from error
  if statistics.count < 1 or (shape is not None and statistics.shape != tuple(shape)):
    raise UserError(f"Calibration cache file {path!r} holds {statistics.count} images of "
                    f"{statistics.shape}, not images of {tuple(shape or ())}.")
  for name, array in [("pixel_sum", statistics.pixel_sum)] + list(
      statistics.amplitude_sum.items()):
    _check_values(array, path, name, "Calibration cache file", "finite",
                  lambda a: np.ones(a.shape, bool), "it is sampled again")
  return statistics, contents.get("preview")


# --- PDS masks (config.sampling.tdas.pds_space_mask / pds_freq_mask) -------------------------

def save_pds_mask(path: str, statistic_hwc) -> None:
  """Writes a raw PDS statistic (H, W, C) as PDS's `.npy`: float32, channels first (C, H, W)."""
  array = np.ascontiguousarray(np.transpose(np.asarray(statistic_hwc, np.float32), (2, 0, 1)))
  with atomic_io.atomic_write(path) as f:
    np.save(f, array, allow_pickle=False)


def read_pds_mask(path: str, field: str, shape) -> np.ndarray:
  """A raw PDS statistic from its `.npy` (C, H, W), returned (H, W, C) float64.

  Like PDS's loader, the array is reshaped to (C, H, W), so a file of C·H·W values in another
  layout is refused only by its size.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"{field}={path!r} does not exist (make it with tools/pds_masks.py "
                            "or PDS's mask_gen_demo.py, or clear the field).")
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, EOFError, ValueError) as error:
    raise UserError(f"{field}={path!r} is not a readable .npy: {error}") from error
  height, width, channels = shape
  if array.size != height * width * channels:
    raise UserError(f"{field}={path!r} holds {array.shape}; the config's images need "
                     f"({channels}, {height}, {width}) (channels first, as PDS saves them).")
  array = np.asarray(array, np.float64).reshape(channels, height, width).transpose(1, 2, 0)
  if not np.all(np.isfinite(array)) or np.any(array < 0) or array.max() <= 0:
    raise UserError(f"{field}={path!r} must be finite, non-negative and not all zero.")
  return array
