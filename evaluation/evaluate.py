"""The metrics of a sample folder (`--mode eval`): FID, KID, IS, precision/recall, frequency
deviation, against the data set's statistics files; or, for the digits demo, the measures of the
digits metric classifier, with the accuracy of class-conditional samples.

`run_lib.evaluate` calls `evaluate_folder` (`config.eval.metric = 'inception'`) or
`evaluate_digits_folder` (`'digits'`) and writes the result as `metrics.json`.
"""
import os
import time
from typing import Any, Dict, Optional

import numpy as np
from absl import logging

from evaluation import digits_classifier
from evaluation import inception as inception_lib
from evaluation import metrics
import sample_rounds
from evaluation import statistics
from tdas import files as tdas_files
from tdas import stats as tdas_stats
from errors import UserError

def frequency_reference(config, workdir: str, stats: Dict[str, Any]
                        ) -> Optional[Dict[str, Any]]:
  """The data's mean-amplitude maps for the frequency deviation, or None when there are none.

  `config.eval.frequency_stats_file` (a `--mode stats` frequency file, read by `tdas.files`) if
  set; else the `dct_amplitude` the Inception statistics file may carry; else
  `<workdir>/stats/frequency_<dataset>_<size>.npz` if it exists.

  Returns:
    {'path': file, 'maps': {'dct': (H, W), ...}} or None.
  """
  path = str(config.eval.get("frequency_stats_file", "") or "")
  field = "config.eval.frequency_stats_file"
  if not path:
    if "dct_amplitude" in stats:
      return dict(path=stats.get("path"), maps=dict(dct=stats["dct_amplitude"]))
    path = statistics.frequency_stats_path(workdir, config.data.dataset, config.data.image_size)
    if not os.path.isfile(path):
      return None
    field = "the default frequency statistics (<workdir>/stats/)"
  return dict(path=path, maps=tdas_files.read_frequency(path, field))


def _common_fingerprint(files) -> Optional[Dict[str, Any]]:
  """The sampling fingerprint the round files share (without the round), or None when they
  record none; files recorded with different settings are a ValueError naming the fields."""
  common, first = None, None
  for path in files:
    recorded = sample_rounds.read_fingerprint(path) if path.endswith(".npz") else None
    if recorded is None:
      continue
    recorded = {k: v for k, v in recorded.items() if k != "round"}
    if common is None:
      common, first = recorded, path
    elif sample_rounds.setting_differences(common, recorded):
      # (rounds that differ only in the per-device batch are one run resumed on other devices)
      lines = sample_rounds.setting_differences(common, recorded)
      raise UserError(f"{path!r} was sampled with other settings than {first!r} ("
                       f"{'; '.join(lines[:6])}): the folder mixes two runs; evaluate each "
                       "run's own --eval_folder.")
  return common


def _subset(features: np.ndarray, size: int, seed: int) -> np.ndarray:
  if len(features) <= size:
    return features
  rng = np.random.default_rng(seed)
  return features[np.sort(rng.choice(len(features), size, replace=False))]


def evaluate_folder(config, workdir: str, folder: str, extractor=None,
                    weights_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """FID, KID, IS (and precision/recall, frequency deviation) of `folder`'s samples_*.npz.

  Every input is checked before any feature is computed: the sample files, the statistics file
  (`config.eval.stats_file`, default `<workdir>/stats/<dataset>_<size>.npz`), the frequency file
  and the Inception weights. Each missing one is a FileNotFoundError naming it.

  Args:
    config: the run's config (`config.eval.*` fields).
    workdir: the work directory (for the default statistics path).
    folder: the sample folder.
    extractor: an `inception.FeatureExtractor` to use instead of building one from the config
      (tests); `weights_info` then describes its weights.
  Returns:
    The JSON-ready metrics dict (see README): `fid`, `kid` {mean, std, subset_size, num_subsets}
    or None, `inception_score` {mean, std, splits}, `precision_recall` or None,
    `frequency_deviation` {transform: {radius, deviation, mean_abs_log_deviation}} or None, and
    what they were computed from.
  """
  start_time = time.time()
  evaluate = config.eval
  files = statistics.sample_files(folder)
  sampling_fingerprint = _common_fingerprint(files)
  image_shape = statistics.read_samples(files[0]).shape[1:]
  stats_file = statistics.stats_path_for_config(config, workdir)
  stats = statistics.load_statistics(stats_file)
  stats["path"] = stats_file
  recorded_size = stats.get("image_size")
  if recorded_size and recorded_size.isdigit() and int(recorded_size) != image_shape[0]:
    raise UserError(f"The samples in {folder!r} are {image_shape[0]} px, the statistics file "
                     f"{stats_file!r} was recorded for {recorded_size} px images: point "
                     "config.eval.stats_file at the statistics of this image size.")
  if stats["mu"].shape != (inception_lib.FEATURE_DIM,):
    raise UserError(f"Statistics file {stats_file!r} holds {stats['mu'].shape[0]}-d features; "
                     f"FID uses the {inception_lib.FEATURE_DIM}-d pool_3 features.")
  frequency = frequency_reference(config, workdir, stats)
  if frequency is not None:
    image_size = image_shape[:2]
    for transform, data_map in frequency["maps"].items():
      if data_map.shape != image_size:
        raise UserError(f"The frequency statistics {frequency['path']!r} are of {data_map.shape} "
                         f"images ({transform}), the samples are {image_size}.")
  if extractor is None:
    extractor, weights_info = inception_lib.extractor_from_config(config)
  weights_info = dict(weights_info or {})
  notes = []
  if stats.get("resize") and stats["resize"] != extractor.resize:
    notes.append(f"the statistics were computed with resize={stats['resize']!r}, the samples "
                 f"with {extractor.resize!r}: FID mixes two preprocessings.")
  if stats.get("input_scaling") and stats["input_scaling"] != extractor.input_scaling:
    notes.append(f"the statistics were computed with input_scaling={stats['input_scaling']!r}, "
                 f"the samples with {extractor.input_scaling!r}.")
  stats_sha, weights_sha = stats.get("inception_sha256", ""), weights_info.get("sha256", "")
  if stats_sha and weights_sha and stats_sha != weights_sha:
    notes.append("the statistics were computed with other Inception weights "
                 f"({stats_sha[:8]}...) than the samples ({weights_sha[:8]}...).")

  spectra = tdas_stats.ImageStatistics(tuple(frequency["maps"]) if frequency else ("dct",))
  shapes = []

  def images():
    for samples in statistics.iterate_samples(files):
      shapes.append(samples.shape[1:])
      if frequency is not None:
        spectra.update(samples.astype(np.float32) / 255.0)
      yield samples

  pools, logits = [], []
  total = 0
  for batch in extractor.batches(images()):
    pools.append(batch["pool"])
    logits.append(batch["logits_unbiased"])
    total += len(batch["pool"])
    logging.log_every_n_seconds(logging.INFO, "Inception features of %d samples.", 30, total)
  if total < 2:
    raise UserError(f"{folder!r} holds {total} sample(s); FID needs at least 2.")
  pool = np.concatenate(pools).astype(np.float64)
  logits = np.concatenate(logits)

  fid = metrics.frechet_distance_to_gaussian(pool, stats["mu"], stats["sigma"])
  if total < pool.shape[1]:
    notes.append(f"FID from {total} samples (< {pool.shape[1]} feature dimensions) is biased "
                 "upwards; use >= 10k (50k for published numbers).")
  kid = None
  if stats["features"] is None:
    notes.append("KID skipped: the statistics file holds mu/sigma only (no `features`).")
  else:
    kid = metrics.kernel_inception_distance(
        stats["features"], pool, num_subsets=int(evaluate.get("kid_subsets", 100)),
        max_subset_size=int(evaluate.get("kid_subset_size", 1000)))
  splits = min(int(evaluate.get("is_splits", 10)), total)
  inception_score = metrics.inception_score(logits, splits=splits)
  precision_recall = None
  pr_samples = int(evaluate.get("precision_recall_samples", 0))
  if pr_samples > 0:
    if stats["features"] is None:
      notes.append("precision/recall skipped: the statistics file has no `features`.")
    else:
      precision_recall = metrics.precision_recall(_subset(stats["features"], pr_samples, 1),
                                                  _subset(pool, pr_samples, 2))
  frequency_deviation = None
  if frequency is not None:
    frequency_deviation = {}
    for transform, data_map in frequency["maps"].items():
      frequency_deviation[transform] = metrics.radial_deviation(
          spectra.amplitude(transform), data_map, int(evaluate.get("frequency_bins", 16)),
          transform)
  for note in notes:
    logging.warning("%s", note)
  return dict(
      metric="inception", fid=fid, kid=kid, inception_score=inception_score,
      precision_recall=precision_recall, frequency_deviation=frequency_deviation,
      num_samples=int(total), image_shape=[int(s) for s in shapes[0]],
      sample_files=[os.path.basename(f) for f in files],
      sampling_fingerprint=sampling_fingerprint,
      stats_file=os.path.abspath(stats_file), stats_layout=stats["layout"],
      stats_num_images=stats["num_images"],
      frequency_stats_file=(os.path.abspath(frequency["path"])
                            if frequency and frequency["path"] else None),
      inception_weights=weights_info.get("path"), inception_sha256=weights_sha or None,
      official_weights=bool(weights_info.get("official", False)),
      resize=extractor.resize, input_scaling=extractor.input_scaling,
      inception_input_size=extractor.image_size,
      is_logits="pool_3 @ fc.kernel (no bias), as the original Inception Score code",
      notes=notes, seconds=time.time() - start_time)


def evaluate_digits_folder(folder: str, weights: str = digits_classifier.DEFAULT_WEIGHTS
                           ) -> Dict[str, Any]:
  """The digits measures of `folder`'s samples (`config.eval.metric = 'digits'`).

  The metric classifier `evaluation.digits_classifier` (not the classifier that guided sampling)
  stands in for Inception: the Fréchet and kernel distances of its features to the 300 held-out
  digits, the label entropy and histogram, and, when the sample files record the labels the
  sampler was asked for (`labels`; guided-diffusion's `arr_1`), the share of samples it reads as
  the requested class, overall and per class.

  Returns:
    The JSON-ready dict: `metric` 'digits', `frechet_distance`, `kernel_distance` (KID x 10^3),
    `label_entropy`, `mean_image_entropy`, `label_histogram` (10,), `accuracy` and
    `per_class_accuracy` (10, None for a class not requested) or None each when no labels are
    recorded, and what they were computed from.
  """
  start_time = time.time()
  files = statistics.sample_files(folder)
  sampling_fingerprint = _common_fingerprint(files)
  images, labels = [], []
  for path in files:
    samples, requested = statistics.read_labelled_samples(path)
    if samples.shape[1:] != digits_classifier.IMAGE_SHAPE:
      raise UserError(f"{path!r} holds {samples.shape[1:]} images; config.eval.metric='digits' "
                       f"measures {digits_classifier.IMAGE_SHAPE} digits (the digits demo's "
                       "data). Use config.eval.metric='inception' for other data.")
    images.append(samples)
    labels.append(requested)
  labelled = [label is not None for label in labels]
  if any(labelled) and not all(labelled):
    raise UserError(f"{folder!r} mixes sample files with requested labels and files without "
                     f"({files[labelled.index(False)]!r}): evaluate each run's own folder.")
  requested = np.concatenate(labels) if all(labelled) else None
  if requested is not None and (requested.min() < 0 or
                                requested.max() >= digits_classifier.NUM_CLASSES):
    raise UserError(f"{folder!r} records labels outside 0..{digits_classifier.NUM_CLASSES - 1} "
                     f"(from {requested.min()} to {requested.max()}).")
  images = np.concatenate(images)
  if len(images) < 2:
    raise UserError(f"{folder!r} holds {len(images)} sample(s); the Fréchet distance needs at "
                     "least 2.")
  quality = digits_classifier.DigitsQuality(digits_classifier.load_classifier(weights))
  measures = quality(images.astype(np.float32) / 255.0, requested)
  measures.setdefault("accuracy", None)
  measures.setdefault("per_class_accuracy", None)
  return dict(
      metric="digits", **measures, num_samples=int(len(images)),
      image_shape=list(digits_classifier.IMAGE_SHAPE),
      sample_files=[os.path.basename(f) for f in files],
      sampling_fingerprint=sampling_fingerprint,
      metric_classifier=os.path.abspath(weights),
      metric_classifier_sha256=inception_lib.file_sha256(weights),
      reference="the 300 held-out digits (datasets.digits_held_out)",
      seconds=time.time() - start_time)
