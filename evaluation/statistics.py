"""Inception statistics of image sets: computing, writing and reading them; sample folders.

A statistics file is an `.npz` with
  `mu` (2048,) float64, `sigma` (2048, 2048) float64 — mean and covariance (ddof 1) of the pool
  features —, optionally `features` (M, 2048) float32 (a random subset, for KID and
  precision/recall), `num_images`, and string metadata (`resize`, `input_scaling`,
  `inception_sha256`, `dataset`, `image_size`).
The TTUR / pytorch-fid `.npz` (`mu`, `sigma`) reads the same way; score_sde's `<dataset>_stats.npz`
(`pool_3`: all (N, 2048) features) gives mu/sigma computed from its features.
By convention the data set's file is `<workdir>/stats/<dataset>_<image size>.npz` (`stats_path`);
`--mode stats` writes the frequency statistics next to it (`frequency_stats_path`).
"""
import glob
import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

import atomic_io
from evaluation import inception as inception_lib
from errors import MissingFileError, UserError

_METADATA_KEYS = ("resize", "input_scaling", "inception_sha256", "dataset", "image_size")


def dataset_stem(dataset: str, image_size: int) -> str:
  """`<dataset>_<image_size>` with the name in lower case, runs of other characters than [a-z0-9]
  made one `_` (as `--mode stats` names its files): 'CIFAR10', 32 -> 'cifar10_32'."""
  name = re.sub(r"[^a-z0-9]+", "_", str(dataset).lower()).strip("_") or "data"
  return f"{name}_{int(image_size)}"


def stats_path(workdir: str, dataset: str, image_size: int) -> str:
  """`<workdir>/stats/<dataset_stem>.npz`, e.g. runs/c10/stats/cifar10_32.npz."""
  return os.path.join(workdir, "stats", dataset_stem(dataset, image_size) + ".npz")


def frequency_stats_path(workdir: str, dataset: str, image_size: int) -> str:
  """`<workdir>/stats/frequency_<dataset_stem>.npz`: where `--mode stats` writes `dct_amplitude`."""
  return os.path.join(workdir, "stats", f"frequency_{dataset_stem(dataset, image_size)}.npz")


def stats_path_for_config(config, workdir: str) -> str:
  """`config.eval.stats_file` if set, else `stats_path` of `config.data.dataset`/`image_size`."""
  configured = str(config.eval.get("stats_file", "") or "")
  return configured or stats_path(workdir, config.data.dataset, config.data.image_size)


class FeatureMoments:
  """Streaming mean and covariance (ddof 1) of (n, D) feature batches, float64.

  Sums are taken about the first batch's mean, which keeps the covariance accurate when the mean
  is large relative to the spread.
  """

  def __init__(self):
    self.count = 0
    self._shift = None
    self._sum = None
    self._outer = None

  def update(self, features) -> None:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
      raise UserError(f"Features must be (n, D), got shape {features.shape}.")
    if features.shape[0] == 0:
      return
    if self._shift is None:
      self._shift = features.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((features.shape[1],) * 2)
    centred = features - self._shift
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred
    self.count += features.shape[0]

  @property
  def mean(self) -> np.ndarray:
    """(D,)"""
    return self._shift + self._sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """(D, D), unbiased."""
    if self.count < 2:
      raise ValueError(f"A covariance needs at least 2 images, got {self.count}.")
    centre = self._sum / self.count
    cov = (self._outer - self.count * np.outer(centre, centre)) / (self.count - 1)
    return (cov + cov.T) / 2.0


class FeatureSubset:
  """A uniform random subset of at most `size` rows of a stream (priority sampling, seeded)."""

  def __init__(self, size: int, seed: int = 0):
    self.size = int(size)
    self._rng = np.random.default_rng(seed)
    self._keys = np.zeros((0,))
    self._rows = None

  def update(self, rows: np.ndarray) -> None:
    if self.size <= 0 or len(rows) == 0:
      return
    keys = self._rng.random(len(rows))
    rows = np.asarray(rows, np.float32)
    all_keys = np.concatenate([self._keys, keys])
    all_rows = rows if self._rows is None else np.concatenate([self._rows, rows])
    if len(all_keys) > self.size:
      keep = np.sort(np.argpartition(all_keys, self.size - 1)[:self.size])
      all_keys, all_rows = all_keys[keep], all_rows[keep]
    self._keys, self._rows = all_keys, all_rows

  @property
  def rows(self) -> Optional[np.ndarray]:
    return self._rows


def _as_batches(images) -> Iterable[np.ndarray]:
  if isinstance(images, np.ndarray):
    return [images]
  return images


def feature_statistics(images, extractor=None, config=None, *, max_features: int = 10000,
                       seed: int = 0, progress: bool = True, total: Optional[int] = None
                       ) -> Dict[str, Any]:
  """mu / sigma of the Inception pool features of a set of uint8 images.

  Args:
    images: one uint8 (N, H, W, C) array or an iterable of such batches (e.g. a data set read
      batch by batch); C is 1 or 3, any H, W (resized for the network, see `config.eval.resize`).
    extractor: an `inception.FeatureExtractor`; built from `config` (`config.eval.
      inception_weights`, `resize`, `inception_batch_size`) when None.
    config: used only when `extractor` is None.
    max_features: keep a uniform random subset of at most this many features (float32) under
      `features`, for KID and precision/recall against the set; 0 keeps none.
    seed: seed of that subset.
    progress: show a tqdm bar (over images; `total` sets its length).
  Returns:
    {'mu': (2048,) float64, 'sigma': (2048, 2048) float64, 'num_images': N, 'features':
     (min(N, max_features), 2048) float32 or absent, 'resize' and 'input_scaling': the
     preprocessing, 'inception_sha256': the weights' hash (when known)}.
  """
  info = {}
  if extractor is None:
    if config is None:
      raise ValueError("feature_statistics needs an extractor or a config to build one from.")
    extractor, info = inception_lib.extractor_from_config(config)
  moments, subset = FeatureMoments(), FeatureSubset(max_features, seed)
  with tqdm(total=total, desc="Inception features", unit="img", disable=not progress) as bar:
    for features in extractor.batches(_as_batches(images)):
      moments.update(features["pool"])
      subset.update(features["pool"])
      bar.update(len(features["pool"]))
  if moments.count < 2:
    raise UserError(f"Statistics need at least 2 images, got {moments.count}.")
  stats = dict(mu=moments.mean, sigma=moments.covariance, num_images=moments.count,
               resize=extractor.resize, input_scaling=extractor.input_scaling)
  if subset.rows is not None:
    stats["features"] = subset.rows
  if info.get("sha256"):
    stats["inception_sha256"] = info["sha256"]
  return stats


def save_statistics(path: str, stats: Dict[str, Any], **metadata) -> str:
  """Writes `stats` (`mu`, `sigma`, optional `features`, `num_images`, strings) plus `metadata`
  (e.g. dataset='CIFAR10', image_size=32, dct_amplitude=...) to `path` atomically. Returns path."""
  arrays = {}
  for key, value in {**stats, **metadata}.items():
    if value is None:
      continue
    arrays[key] = np.asarray(value)
    if arrays[key].dtype == object:
      raise ValueError(f"Statistics entry {key!r} is not an array, number or string.")
  for key in ("mu", "sigma"):
    if key not in arrays:
      raise ValueError(f"Statistics to save lack {key!r}.")
  atomic_io.atomic_savez(path, compressed=False, **arrays)
  return path


def load_statistics(path: str, field: str = "config.eval.stats_file") -> Dict[str, Any]:
  """Reads a statistics file: ours / TTUR (`mu`, `sigma`) or score_sde's (`pool_3` features).

  Returns:
    {'mu': (D,), 'sigma': (D, D) float64, 'features': (M, D) float32 or None, 'num_images': int
     or None, 'layout': 'mu_sigma' | 'pool_3', and any of `resize`, `input_scaling`,
     `inception_sha256`, `dataset`, `image_size` (str) and `dct_amplitude` (H, W) stored in the
     file}.
  Raises:
    FileNotFoundError naming `path` and how to make it; ValueError for a file without either
    layout.
  """
  if not os.path.isfile(path):
    raise MissingFileError(
        f"Statistics file {path!r} does not exist: make it with `--mode stats` (it writes "
        f"<workdir>/stats/<dataset>_<size>.npz) or point {field} at an existing .npz (ours, "
        "pytorch-fid's mu/sigma, or score_sde's <dataset>_stats.npz with pool_3).")
  try:
    with np.load(path, allow_pickle=False) as data:
      contents = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Statistics file {path!r} is not a readable .npz (truncated or damaged?): "
                     f"{type(e).__name__}: {e}") from e
  out: Dict[str, Any] = {}
  if "mu" in contents and "sigma" in contents:
    out.update(mu=np.asarray(contents["mu"], np.float64),
               sigma=np.asarray(contents["sigma"], np.float64), layout="mu_sigma")
    features = contents.get("features")
    out["features"] = None if features is None else np.asarray(features, np.float32)
    out["num_images"] = int(contents["num_images"]) if "num_images" in contents else None
  elif "pool_3" in contents:
    pool = np.asarray(contents["pool_3"], np.float64)
    pool = pool.reshape(pool.shape[0], -1)
    out["mu"] = pool.mean(axis=0)
    out["sigma"] = np.cov(pool, rowvar=False)
    out.update(features=pool.astype(np.float32), num_images=int(pool.shape[0]), layout="pool_3")
  else:
    raise UserError(f"Statistics file {path!r} holds {sorted(contents)}; expected `mu` and "
                     "`sigma` (this project, pytorch-fid) or `pool_3` (score_sde).")
  dim = out["mu"].shape
  if out["mu"].ndim != 1 or out["sigma"].shape != dim * 2:
    raise UserError(f"Statistics file {path!r}: mu {out['mu'].shape} and sigma "
                     f"{out['sigma'].shape} do not fit together.")
  for key in ("mu", "sigma"):
    bad = int(np.sum(~np.isfinite(out[key])))
    if bad:
      raise UserError(f"Statistics file {path!r} ({field}): `{key}` holds {bad} NaN or inf "
                      "values; make it again with --mode stats.")
  if out["features"] is not None and out["features"].shape[1:] != dim:
    raise UserError(f"Statistics file {path!r}: features {out['features'].shape} do not fit mu "
                     f"{dim}.")
  for key in _METADATA_KEYS:
    if key in contents:
      out[key] = str(contents[key])
  if "dct_amplitude" in contents:
    out["dct_amplitude"] = np.asarray(contents["dct_amplitude"], np.float64)
  return out


# ----------------------------------------------------------------------------------------------
# Sample folders

_SAMPLE_FILE = re.compile(r"samples_(\d+)(?:_host(\d+))?\.npz$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Image files read per batch of an image folder.
_IMAGES_PER_BATCH = 256


def sample_files(path: str) -> List[str]:
  """The sample files `--mode eval` reads from `path`, in order.

  `path` is a `.npz` file (`samples` or `arr_0`, uint8 NHWC), or a folder: its round files
  `samples_<round>[_host<p>].npz` (by round, then host: samples_2 before samples_10) if it has
  any, else its other `.npz` files (e.g. another tool's `arr_0` file), else its PNG / JPEG images
  (sorted by name). Raises FileNotFoundError when there is nothing to read.
  """
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise MissingFileError(f"Sample folder {path!r} does not exist: draw samples with "
                            "`--mode sample` (same --workdir and --eval_folder) first, or point "
                            "config.eval.samples_path at a .npz or an image folder.")
  rounds = [f for f in glob.glob(os.path.join(path, "samples_*.npz"))
            if _SAMPLE_FILE.search(os.path.basename(f))]
  if rounds:
    def order(name):
      match = _SAMPLE_FILE.search(os.path.basename(name))
      return int(match.group(1)), int(match.group(2) or 0)
    return sorted(rounds, key=order)
  others = sorted(glob.glob(os.path.join(path, "*.npz")))
  if others:
    return others
  pictures = sorted(os.path.join(path, f) for f in os.listdir(path)
                    if f.lower().endswith(IMAGE_SUFFIXES))
  if pictures:
    return pictures
  raise MissingFileError(f"No samples in {path!r} (no samples_*.npz, other .npz or PNG/JPEG "
                          "images): draw samples with `--mode sample` (same --workdir and "
                          "--eval_folder) first.")


def read_samples(path: str) -> np.ndarray:
  """The uint8 (N, H, W, C) images of one sample file (C = 1 or 3): `samples` (this project)
  or `arr_0` (guided-diffusion / EDM) of an .npz, or one PNG / JPEG image (N = 1)."""
  return _load_sample_file(path, with_labels=False)[0]


def read_labelled_samples(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """(images, labels) of one sample file, read once: the images as `read_samples` gives them,
  and the requested class of each (int64 (N,)) or None when the file records none: `labels`
  (class-conditional rounds of `--mode sample`) or, beside `arr_0`, `arr_1` (guided-diffusion's
  class-conditional files). Labels that are not one integer per image are a UserError."""
  samples, labels, key = _load_sample_file(path, with_labels=True)
  if labels is None:
    return samples, None
  if labels.shape != (samples.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"Sample file {path!r}: `{key}` is {labels.dtype} {labels.shape}; expected "
                     f"one integer class per image ({samples.shape[0]},).")
  return samples, labels.astype(np.int64)


def _load_sample_file(path: str, with_labels: bool):
  """(images uint8 (N, H, W, C), the label array or None, its key) of one sample file."""
  if path.lower().endswith(IMAGE_SUFFIXES):
    return _read_picture(path)[None], None, None
  labels, label_key = None, None
  try:
    with np.load(path, allow_pickle=False) as data:
      key = next((k for k in ("samples", "arr_0") if k in data.files), None)
      if key is None:
        raise UserError(f"Sample file {path!r} has neither `samples` nor `arr_0` (it holds "
                         f"{data.files}).")
      samples = data[key]
      if with_labels:
        label_key = "labels" if "labels" in data.files else (
            "arr_1" if key == "arr_0" and "arr_1" in data.files else None)
        labels = None if label_key is None else data[label_key]
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Sample file {path!r} is not a readable .npz (truncated or damaged?): "
                     f"{type(e).__name__}: {e}") from e
  if samples.ndim == 3:  # (N, H, W): grey images
    samples = samples[..., None]
  if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[-1] not in (1, 3):
    raise UserError(f"Sample file {path!r}: `{key}` is {samples.dtype} {samples.shape}; "
                     "expected uint8 (N, H, W, 1 or 3) as `--mode sample` writes.")
  return samples, labels, label_key


def _read_picture(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as picture:
      picture = picture.convert("L") if picture.mode in ("L", "I", "I;16", "1") else \
          picture.convert("RGB")
      image = np.asarray(picture, np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Image {path!r} cannot be read ({type(e).__name__}: {e}).") from e
  return image[..., None] if image.ndim == 2 else image


def iterate_samples(files: Sequence[str]) -> Iterator[np.ndarray]:
  """Yields the files' images in batches (one per .npz; image files in groups), checking that
  all have one image shape."""
  shape, pictures = None, []
  for path in files:
    images = read_samples(path)
    if shape is not None and images.shape[1:] != shape:
      raise UserError(f"Sample file {path!r} holds {images.shape[1:]} images, the earlier "
                       f"files {shape}.")
    shape = images.shape[1:]
    if not path.lower().endswith(IMAGE_SUFFIXES):
      yield images
      continue
    pictures.append(images)
    if len(pictures) == _IMAGES_PER_BATCH:
      yield np.concatenate(pictures)
      pictures = []
  if pictures:
    yield np.concatenate(pictures)
