"""`--mode stats`: a data set's statistics for TDAS, the analytic model and FID.

`run` reads `config.data.path` and writes the mean image and space filter, the frequency
statistics, a fitted analytic Gaussian and, when the FID Inception weights are at hand, the
Inception statistics, under <workdir>/stats/.
"""
import json
import os
import time

import numpy as np
from absl import logging

import datasets
import validation
from atomic_io import atomic_write_text
from configs import project_fields
from evaluation import inception as inception_lib
from evaluation import statistics as evaluation_statistics
from models import analytic
from tdas import files as tdas_files
from tdas import filters as tdas_filters
from tdas import plots
from tdas import stats as tdas_stats


def run(config, workdir):
  """Data-set statistics: mean image and space filter, frequency statistics, analytic Gaussian.

  Reads the data set at `config.data.path` (an image folder or an .npz with `images`) and writes
  under <workdir>/stats/: space_<dataset>_<size>.npz (`mean` (H, W, C) in [0, 1], for
  config.sampling.tdas.space_file, and `space`, the filter made with tdas.space_f / space_alpha),
  frequency_<dataset>_<size>.npz (`dct_amplitude`, `dft_amplitude` (H, W), `num_images`),
  analytic_<dataset>_<size>.npz (`mean`, `dct_variance`, for config.model.target_file), a PNG for
  each of the first two and stats_<dataset>_<size>.json.
  """
  validation.check_stats_mode(config)
  path = project_fields.section_with_defaults(config, "data").path
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  # About 4M values per batch: ~32 MB in float64 whatever the image size.
  batch_size = max(1, (1 << 22) // (size * size * channels))

  def batches():
    for batch in datasets.iterate_images(path, size, channels, batch_size):
      yield batch.astype(np.float32) / 255.0

  start = time.perf_counter()
  statistics = tdas_stats.image_statistics(batches(), progress="data statistics")
  if statistics.count < 2:
    raise datasets.DatasetError(f"Data set {path!r} holds {statistics.count} image(s); the "
                                "statistics need at least 2.")
  mean = statistics.mean_image()
  tdas = config.sampling.tdas
  space = tdas_filters.space_filter(mean, tdas.space_f, tdas.space_alpha)
  target_mean, dct_variance = analytic.fit_target(batches, mean=mean)  # one more pass

  out_dir = os.path.join(workdir, "stats")
  os.makedirs(out_dir, exist_ok=True)
  dataset = config.data.get("dataset", "data")
  stem = evaluation_statistics.dataset_stem(dataset, size)
  files = {name: os.path.join(out_dir, f"{name}_{stem}.npz")
           for name in ("space", "frequency", "analytic")}
  tdas_files.save_space(files["space"], mean, space, tdas.space_f, tdas.space_alpha,
                        statistics.count)
  tdas_files.save_frequency(files["frequency"], statistics)
  tdas_files.save_analytic_target(files["analytic"], target_mean, dct_variance, statistics.count)
  title = f"{dataset} {size} px"
  plots.plot_space(os.path.join(out_dir, f"space_{stem}.png"), mean, space,
                   f"{title}: space_f={tdas.space_f}, space_alpha={tdas.space_alpha}")
  plots.plot_frequency_statistics(os.path.join(out_dir, f"frequency_{stem}.png"),
                                  statistics.amplitude("dct"), statistics.amplitude("dft"),
                                  statistics.count, title)
  summary = dict(data_path=os.path.abspath(path), num_images=statistics.count, image_size=size,
                 num_channels=channels, files={k: os.path.abspath(v) for k, v in files.items()},
                 space_f=tdas.space_f, space_alpha=tdas.space_alpha,
                 mean_per_channel=[float(v) for v in mean.mean(axis=(0, 1))],
                 pixel_std=float(np.sqrt(dct_variance.mean())),
                 seconds=time.perf_counter() - start)
  # Inception statistics for FID/KID (--mode eval), when the FID weight file is at hand.
  try:
    inception_lib.resolve_weights_path(config.eval.get("inception_weights", ""))
  except inception_lib.InceptionWeightsNotFound as missing:
    logging.warning("Inception statistics skipped (FID needs them): %s", missing)
    summary["files"]["inception"] = None
  else:
    uint8_batches = datasets.iterate_images(path, size, channels, batch_size)
    features = evaluation_statistics.feature_statistics(uint8_batches, config=config,
                                                        total=statistics.count)
    inception_path = evaluation_statistics.stats_path(workdir, dataset, size)
    evaluation_statistics.save_statistics(inception_path, features, dataset=dataset,
                                          image_size=size)
    summary["files"]["inception"] = os.path.abspath(inception_path)
  atomic_write_text(os.path.join(out_dir, f"stats_{stem}.json"), json.dumps(summary, indent=2))
  logging.info("Statistics of %d images of %s written to %s.", statistics.count, path, out_dir)
  return summary
