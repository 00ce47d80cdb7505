"""`--mode calibrate`: TDAS's frequency filter fitted to a sampler's deviation at N' steps, or
PDS's masks from a data set (`calibrate.method = 'pds'`).

`run` draws the two vanilla sample sets (`calibration_sets`), fits the filters
(`tdas.calibration`, docs/numerics.md §6) and writes them with their plots and a JSON summary
under <workdir>/calibration/; `run_pds` computes PDS's raw mask statistics (docs/pds.md §3a).
"""
import json
import os
import time

import numpy as np
from absl import logging

import calibration_sets
import checkpoints
import datasets
import images
import validation
from atomic_io import atomic_write_text
from configs import project_fields
from errors import UserError
from models import utils as model_utils
from sampling import devices
from tdas import calibration as tdas_calibration
from tdas import files as tdas_files
from tdas import filters as tdas_filters
from tdas import plots
from tdas import settings as tdas_settings
from tdas import stats as tdas_stats
from tdas.transforms import check_transform

# Fewer images than this make the per-coordinate statistics too noisy to fit a filter to.
MIN_CALIBRATION_SAMPLES = 16


def _finite_or_none(values):
  """A float array as a JSON-safe list: NaN / inf (empty radial bins) become null."""
  return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def run(config, workdir):
  """Fit TDAS's frequency filter for N' steps to the vanilla sampler's deviation (or PDS's masks).

  The sampler is `config.sampling.method` (any method with steps). Draws `calibrate.num_samples`
  vanilla samples at the full N (the reference, cached under
  <workdir>/calibration/cache/) and at N', computes Dev = S(N') / S(N) in `calibrate.transform`,
  fits the zoned filter (least squares and the paper's quantile rule) and the radial-profile
  filter, and writes <workdir>/calibration/: filters_<N'>.npz (for
  config.sampling.tdas.filter_file; its frequency filter is the `calibrate.method` fit),
  calibration_<N'>.json and calibration_<N'>.png (+ samples_<N'>.png, behaviour_<N'>.png).
  `calibrate.method = 'pds'` makes PDS's masks from the data set instead (`run_pds`).
  """
  settings = project_fields.section_with_defaults(config, "calibrate")
  tdas_calibration.check_method(settings.method)
  validation.check_calibrate_mode(config, MIN_CALIBRATION_SAMPLES)
  if tdas_calibration.check_method(settings.method) in tdas_calibration.DATA_METHODS:
    return run_pds(config, workdir, settings)
  validation.check_sde(config)
  devices.set_matmul_precision(config)
  if str(config.sampling.method).lower() == "ode":
    raise UserError("--mode calibrate measures a sampler's deviation under fewer steps; "
                     "config.sampling.method='ode' has no number of steps (pick a method with "
                     "steps: pc, euler, heun, edm, euler_ancestral, ddim, dpmpp_*).")
  full, steps = calibration_sets.calibration_steps(config)
  if steps > full:
    raise UserError(f"config.calibrate.steps={steps} exceeds model.num_scales={full}: the "
                     "accelerated sampler must take at most the full number of steps.")
  num_samples = int(settings.num_samples)
  if num_samples < MIN_CALIBRATION_SAMPLES:
    raise UserError(f"config.calibrate.num_samples={num_samples} is too few: the statistics need "
                     f"at least {MIN_CALIBRATION_SAMPLES} samples per set (the paper uses 200).")
  # The filter is fitted for the TDAS the config describes: its transform and space filter.
  target = tdas_settings.for_calibration(config)
  transform = check_transform(settings.transform or target.transform)
  method = tdas_calibration.check_method(settings.method)
  num_bins = int(settings.num_bins)
  if num_bins < 1:
    raise UserError(f"config.calibrate.num_bins={num_bins} must be >= 1.")
  batch_size = (validation.positive_int(settings, "batch_size", allow_zero=True,
                                        name="config.calibrate.batch_size")
                or validation.positive_int(config, "eval.batch_size"))
  seed = int(settings.seed)
  shape = tdas_settings.image_shape(config)
  out_dir = os.path.join(workdir, "calibration")
  os.makedirs(out_dir, exist_ok=True)
  if steps == full:
    logging.warning("Calibrating for N' = N = %d: the deviation is 1 by construction.", full)

  model = model_utils.create_model(config)
  variables, source = checkpoints.load_variables(config, workdir)
  key = calibration_sets.cache_key(config, source, seed, batch_size)
  cache = os.path.join(out_dir, "cache")
  start = time.perf_counter()
  reference, reference_preview, _ = calibration_sets.set_statistics(
      config, model, variables, full, num_samples, batch_size, seed,
      os.path.join(cache, f"reference_{full}_{key}"), "reference")
  accelerated, accelerated_preview, _ = calibration_sets.set_statistics(
      config, model, variables, steps, num_samples, batch_size, seed,
      os.path.join(cache, f"accelerated_{steps}_{key}"), "accelerated")
  sampling_seconds = time.perf_counter() - start
  s_reference, s_accelerated = reference.amplitude(transform), accelerated.amplitude(transform)
  result = tdas_calibration.calibrate_frequency_filter(
      s_reference, s_accelerated, shape[2], transform, method, num_bins,
      tuple(settings.quantiles), float(settings.max_gain))

  if result["one_zone"]["identity"]:
    logging.warning("The one-zone rule found no outer band where the deviation at %d steps "
                    "departs from 1 (its fit is the identity filter, r = 1, lambda = 1; "
                    "calibration_%d.json records identity: true).", steps, steps)
  space = np.ones(shape, np.float32) if target.space is None else target.space
  fits = dict(zones=result["zones"], quantile=result["quantile"], one_zone=result["one_zone"],
              radial_gains=[float(g) for g in result["radial_gains"]])
  info = dict(made_by="calibrate", sampler=str(config.sampling.method), transform=transform,
              method=method, steps=steps,
              full_steps=full, num_samples=accelerated.count, seed=seed,
              space_file=target.space_file if target.space is not None else "", **fits)
  filter_path = os.path.join(out_dir, f"filters_{steps}.npz")
  tdas_files.save_filters(filter_path, space, result["freq"], info)

  behaviour = None
  if settings.data_stats_file:
    data_amplitude = tdas_files.read_frequency(settings.data_stats_file,
                                               "config.calibrate.data_stats_file", shape[:2],
                                               transform)[transform]
    centres, b_reference = tdas_stats.behaviour_function(s_reference, data_amplitude, num_bins,
                                                         transform)
    _, b_accelerated = tdas_stats.behaviour_function(s_accelerated, data_amplitude, num_bins,
                                                     transform)
    behaviour = dict(data_stats_file=settings.data_stats_file, centres=centres.tolist(),
                     reference=_finite_or_none(b_reference),
                     accelerated=_finite_or_none(b_accelerated))
    plots.plot_behaviour(os.path.join(out_dir, f"behaviour_{steps}.png"), centres,
                         {f"{full} steps": b_reference, f"{steps} steps": b_accelerated},
                         transform)
  plots.plot_calibration(os.path.join(out_dir, f"calibration_{steps}.png"), s_reference,
                         s_accelerated, result, full, steps)
  plots.plot_sample_sets(os.path.join(out_dir, f"samples_{steps}.png"),
                         {f"reference: {full} steps": images.image_grid(reference_preview),
                          f"accelerated: {steps} steps": images.image_grid(accelerated_preview)},
                         f"vanilla samples, seed {seed} (first batch)")

  summary = dict(
      sampler=str(config.sampling.method), steps=steps, full_steps=full, speedup=full / steps,
      transform=transform, method=method,
      num_samples=dict(reference=reference.count, accelerated=accelerated.count),
      requested_num_samples=num_samples, batch_size=batch_size, seed=seed, source=source,
      cache_key=key, filter_file=os.path.abspath(filter_path), filter=fits[method] if method !=
      "radial" else dict(radial_gains=fits["radial_gains"]),
      fits=fits, num_bins=num_bins, quantiles=list(settings.quantiles),
      profile=dict(centres=result["centres"].tolist(),
                   deviation=_finite_or_none(result["profile"]),
                   counts=[int(c) for c in result["counts"]]),
      behaviour=behaviour, sampling_seconds=sampling_seconds)
  atomic_write_text(os.path.join(out_dir, f"calibration_{steps}.json"),
                    json.dumps(summary, indent=2))
  logging.info("Calibrated N'=%d against N=%d (%s, %s): zones r1 %.3f r2 %.3f lambda1 %.4f "
               "lambda2 %.4f; wrote %s.", steps, full, transform, method, result["zones"]["r1"],
               result["zones"]["r2"], result["zones"]["lambda1"], result["zones"]["lambda2"],
               filter_path)
  return summary


def write_pds_masks(data_path, image_size, num_channels, num_images, out_dir,
                    field="config.data.path"):
  """PDS's raw mask statistics of the first `num_images` images of a data set (docs/pds.md §3a),
  written as `pds_space.npy` = mean(x²) and `pds_freq.npy` = log(1 + mean |DFT2(x)|²), float32
  (C, H, W) as PDS saves them. Returns (space path, freq path, images read, space (H, W, C),
  freq (H, W, C)). Errors name `field`, where the data path came from."""
  batches = datasets.iterate_images(data_path, image_size, num_channels,
                                    max_images=num_images, field=field)
  data = np.concatenate(list(batches), axis=0).astype(np.float64) / 255.0
  if data.shape[0] < 2:
    raise datasets.DatasetError(f"Data set {data_path!r} holds {data.shape[0]} image(s); PDS's "
                                "masks need at least 2.")
  space, freq = tdas_filters.pds_statistics(data)
  os.makedirs(out_dir, exist_ok=True)
  paths = os.path.join(out_dir, "pds_space.npy"), os.path.join(out_dir, "pds_freq.npy")
  tdas_files.save_pds_mask(paths[0], space)
  tdas_files.save_pds_mask(paths[1], freq)
  return paths[0], paths[1], data.shape[0], space, freq


def run_pds(config, workdir, settings):
  """`calibrate.method='pds'`: PDS's filter recipe, from the data set rather than from samples.

  Reads the first `calibrate.num_samples` images of `config.data.path` (PDS: 200) and writes
  under <workdir>/calibration/: pds_space.npy and pds_freq.npy (the raw statistics, for
  config.sampling.tdas.pds_space_mask / pds_freq_mask), pds_masks.png (the two filters as the
  sampler applies them with `sampling.tdas.pds_alpha`) and calibration_pds.json. No network runs.
  """
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  num_images = validation.positive_int(settings, "num_samples",
                                       name="config.calibrate.num_samples")
  alpha = float(config.sampling.tdas.pds_alpha)
  if not alpha > 1:
    raise UserError(f"config.sampling.tdas.pds_alpha={alpha!r} must be > 1.")
  data_path = project_fields.section_with_defaults(config, "data").path
  out_dir = os.path.join(workdir, "calibration")
  space_path, freq_path, count, space, freq = write_pds_masks(data_path, size, channels,
                                                              num_images, out_dir)
  if count < num_images:
    logging.warning("config.data.path=%r holds %d images, fewer than calibrate.num_samples=%d; "
                    "the masks average all of them.", data_path, count, num_images)
  space_filter, freq_filter = (tdas_filters.pds_filter(m, alpha) for m in (space, freq))
  plots.plot_pds_masks(os.path.join(out_dir, "pds_masks.png"), space_filter, freq_filter,
                       f"PDS masks of {count} images, alpha = {alpha:g}")
  flags = ["--tdas", "--config.sampling.tdas.filter_file=",
           "--config.sampling.tdas.use_space=True", "--config.sampling.tdas.use_frequency=True",
           f"--config.sampling.tdas.pds_space_mask={os.path.abspath(space_path)}",
           f"--config.sampling.tdas.pds_freq_mask={os.path.abspath(freq_path)}",
           "--config.sampling.tdas.transform=dft",
           "--config.sampling.tdas.precondition_drift=True"]
  summary = dict(
      method="pds", data_path=os.path.abspath(data_path), num_images=count,
      requested_num_images=num_images, image_size=size, num_channels=channels, alpha=alpha,
      files=dict(space=os.path.abspath(space_path), freq=os.path.abspath(freq_path)),
      filter_range=dict(space=[float(space_filter.min()), float(space_filter.max())],
                        freq=[float(freq_filter.min()), float(freq_filter.max())]),
      sample_flags=flags)
  atomic_write_text(os.path.join(out_dir, "calibration_pds.json"), json.dumps(summary, indent=2))
  logging.info("PDS masks of %d images written to %s; sample with %s", count, out_dir,
               " ".join(flags))
  return summary
