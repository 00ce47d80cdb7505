"""The TDAS filter file: an `.npz` with `space` and `freq` (H, W, C) float32 and `info`, a JSON
string saying how they were made. Written atomically; read with shape checks against the config.

Only `run_lib` and the calibration/statistics modes call these (the samplers never read files).
"""
import json
import os

import numpy as np

import atomic_io

class FilterFileError(ValueError):
  """A filter file that is missing, unreadable or does not fit the config."""


def save_filters(path: str, space, freq, info: dict) -> None:
  """Writes `space`, `freq` (each (H, W, C)) and `info` to `path` (.npz) atomically."""
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
    with np.load(path, allow_pickle=False) as data:
      contents = {k: data[k] for k in data.files}
  except Exception as e:  # zipfile / numpy raise several types for a damaged file
    raise FilterFileError(f"TDAS filter file {path!r} is not a readable .npz: {e}") from e
  missing = [k for k in ("space", "freq", "info") if k not in contents]
  if missing:
    raise FilterFileError(f"TDAS filter file {path!r} lacks {missing} (it holds "
                          f"{sorted(contents)}).")
  space, freq = contents["space"].astype(np.float32), contents["freq"].astype(np.float32)
  for name, array in (("space", space), ("freq", freq)):
    if shape is not None and tuple(array.shape) != tuple(shape):
      raise FilterFileError(
          f"TDAS filter file {path!r}: `{name}` has shape {tuple(array.shape)} but the config's "
          f"images are {tuple(shape)} (data.image_size, data.num_channels).")
    # A space filter may be 0 (space_alpha = 1 where the data's mean is 0, e.g. a digit's
    # border); the frequency filter's gains must be positive.
    low = np.any(array < 0) if name == "space" else np.any(array <= 0)
    if not np.all(np.isfinite(array)) or low:
      kind = "non-negative" if name == "space" else "positive"
      raise FilterFileError(f"TDAS filter file {path!r}: `{name}` must be finite and {kind}.")
  try:
    info = json.loads(str(contents["info"]))
  except json.JSONDecodeError as e:
    raise FilterFileError(f"TDAS filter file {path!r}: `info` is not JSON: {e}") from e
  return space, freq, info
