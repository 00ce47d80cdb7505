"""The modes of `main.py`, one function each, and `MODES`, the table `--mode` picks from.

A mode reads the config, calls the library (`sampling.factory`, `tdas.settings`,
`tdas.calibration`, `evaluation.evaluate`, `train`), and writes its outputs under the workdir
through the modules that own each format (`tdas.files`, `images`, `atomic_io`).
"""
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

import calibration_sets
import checkpoints
import controllable
import datasets
import images
import likelihood
import sample_rounds
import sde_lib
import train as train_lib
import validation
from atomic_io import atomic_write_text
from configs import project_fields
from evaluation import evaluate as evaluation
from evaluation import inception as inception_lib
from evaluation import statistics as evaluation_statistics
from models import analytic
from models import utils as model_utils
from sampling import devices, factory
from tdas import calibration as tdas_calibration
from tdas import files as tdas_files
from tdas import filters as tdas_filters
from tdas import plots
from tdas import settings as tdas_settings
from tdas import stats as tdas_stats
from tdas.transforms import check_transform
from errors import UserError

# Fewer images than this make the per-coordinate statistics too noisy to fit a filter to.
MIN_CALIBRATION_SAMPLES = 16


def check(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Load the configured checkpoint and check that it fits the config's network.

  Prints one JSON line: the checkpoint file, its training step, the model and its parameter count.
  """
  directory, step = checkpoints.checkpoint_location(config, workdir)
  path = checkpoints.find_checkpoint(directory, step)
  variables, step = checkpoints.load_checkpoint(path, config)
  num_params = int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"])))
  summary = dict(checkpoint=os.path.abspath(path), step=step, model=config.model.name,
                 image_size=config.data.image_size, num_params=num_params,
                 collections=sorted(variables))
  logging.info("Checkpoint %s fits config.model.name=%s (%d parameters).", path,
               config.model.name, num_params)
  print(json.dumps(summary))
  return summary


def _host_suffix():
  return "" if jax.process_count() == 1 else f"_host{jax.process_index()}"


def sample(config, workdir, eval_folder="eval", discard_rounds=False):
  """Draw config.eval.num_samples samples (vanilla or TDAS) into <workdir>/<eval_folder>/.

  Writes samples_<round>.npz (uint8 NHWC under `samples`, with the fingerprint of what made it),
  a PNG grid, sampling.json and, with TDAS on, vanilla_vs_tdas.png. A rerun keeps the rounds
  that read back with this run's fingerprint and samples the others; rounds made with other
  settings stop it (or, with `discard_rounds`, are deleted and sampled again); rounds made with
  another per-device batch (another device count) are kept with a notice. Processes that share
  the folder share its rounds (`sample_rounds.sample_missing`). A full disk raises
  `sample_rounds.DiskFullError` saying how many rounds are whole (docs/reliability.md).
  """
  validation.check_sample_mode(config)
  devices.set_matmul_precision(config)
  distributed = config.sampling.distributed
  devices.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                 distributed.process_id)
  out_dir = os.path.join(workdir, eval_folder)
  num_rounds = int(math.ceil(int(config.eval.num_samples) / int(config.eval.batch_size)))
  try:
    return _sample(config, workdir, out_dir, discard_rounds)
  except OSError as error:
    # A full disk while writing a round, the grid or sampling.json: every file is written
    # atomically, so what is there is whole; say how many rounds that is.
    if not sample_rounds.is_disk_full(error):
      raise
    raise sample_rounds.disk_full(out_dir, _host_suffix(), num_rounds, error,
                                  os.path.basename(error.filename or "")) from error


def _sample(config, workdir, out_dir, discard_rounds):
  """`sample`'s work, once the counts are checked (a full disk is reported by `sample`)."""
  sample_rounds.check_writable(out_dir)
  variables, source = checkpoints.load_variables(config, workdir)
  tdas = tdas_settings.resolve(config)

  mesh = devices.batch_mesh()
  batch_size, num_samples = int(config.eval.batch_size), int(config.eval.num_samples)
  devices.check_batch_size(batch_size, mesh)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  batch_sharding = devices.batch_sharding(mesh)
  sampler = _sampler(config, shape, mesh, batch_sharding)
  setup = sampler.setup
  # The sampler's own steps (annealed Langevin: levels × steps per level); N' otherwise.
  steps = sampler.num_steps or setup.sde.N
  _warn_filter_steps(tdas, setup.sde.N)
  suffix = _host_suffix()
  fields = sample_rounds.fingerprint(config, variables, tdas, shape, setup.sde.N, setup.eps,
                                     jax.process_count(), int(mesh.devices.size))
  sample_rounds.check_folder(out_dir, suffix, fields, discard_rounds, log=logging.warning)
  replicated = devices.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  tdas = tdas.device_put(replicated)

  num_rounds = int(math.ceil(num_samples / batch_size))
  seed_key = jax.random.PRNGKey(config.sampling.seed)
  local_index = devices.local_row_indices(batch_sharding, shape)
  logging.info("Sampling %d rounds of %d (%d samples) with %d steps (speed-up %.3g, eps %.3g), "
               "TDAS %s, on %d devices.", num_rounds, batch_size, num_samples, steps,
               setup.speedup, setup.eps, "on" if tdas.enabled else "off", mesh.devices.size)
  timing = dict(seconds=0.0, nfe=sampler.nfe)

  def round_rows(r):
    # The last round keeps only the samples up to num_samples (global rows), on every host.
    return local_index < num_samples - r * batch_size

  def draw(r):
    start = time.perf_counter()
    x, timing["nfe"] = factory.run(sampler, jax.random.fold_in(seed_key, r), variables, tdas,
                                   progress_label=f"round {r}", what=f"Round {r}")
    timing["seconds"] += time.perf_counter() - start
    return images.to_uint8(x, config.data.centered)[round_rows(r)]

  rounds_run = sample_rounds.sample_missing(
      out_dir, suffix, fields, num_rounds, lambda r: int(round_rows(r).sum()), draw,
      shared_job=jax.process_count() > 1, every_process=devices.all_processes,
      log=lambda level, message: getattr(logging, level)("%s", message))

  # The pictures show process 0's rows (every process samples the vanilla batch: a collective).
  first = np.load(sample_rounds.round_path(out_dir, 0, suffix))["samples"][:images.GRID_MAX_IMAGES]
  writes_pictures = jax.process_index() == 0
  if writes_pictures:
    images.save_png(os.path.join(out_dir, "samples_grid.png"), images.image_grid(first))
    logging.info("samples_grid.png shows the first %d samples (round 0).", len(first))
  if tdas.enabled and config.sampling.vanilla_comparison:
    vanilla, _ = factory.run(sampler, jax.random.fold_in(seed_key, 0), variables,
                             tdas.without_filters(), progress_label="vanilla comparison")
    vanilla = images.to_uint8(vanilla, config.data.centered)[round_rows(0)][:len(first)]
    if writes_pictures:
      label = "PDS" if tdas.pds_masks is not None and tdas.precondition_drift else "TDAS"
      images.save_comparison(os.path.join(out_dir, "vanilla_vs_tdas.png"), vanilla, first,
                             steps, timing["nfe"], label)
  if config.sampling.get("export_arr0", False) and jax.process_count() == 1:
    export = images.export_arr0(out_dir, [sample_rounds.round_path(out_dir, r, suffix)
                                          for r in range(num_rounds)])
    logging.info("Wrote every sample as one arr_0 file for other evaluators: %s", export)

  seconds = timing["seconds"]
  summary = dict(
      num_samples=num_samples, rounds=num_rounds, rounds_this_run=rounds_run,
      batch_size=batch_size, steps=steps, speedup=setup.speedup, eps=setup.eps,
      nfe=timing["nfe"], method=config.sampling.method, **sampler.describe(), source=source,
      grid_images=len(first),
      tdas=tdas.describe(), device_count=mesh.devices.size, process_count=jax.process_count(),
      seconds=seconds,
      seconds_per_step=(seconds / (rounds_run * steps)) if rounds_run else None,
      fingerprint=fields)
  atomic_write_text(os.path.join(out_dir, f"sampling{suffix}.json"),
                    json.dumps(summary, indent=2))
  logging.info("Wrote %d rounds to %s (%.1f s this run).", rounds_run, out_dir, seconds)
  return summary


# Samplers built by `sample` in this process, by what their compiled programs depend on: a rerun
# in the same process (a notebook, the tests) reuses the compiled programs.
_SAMPLERS = {}
_MAX_CACHED_SAMPLERS = 4


def _sampler(config, shape, mesh, batch_sharding):
  parts = {name: config[name].to_dict() for name in ("model", "training", "data", "sampling")}
  key = (json.dumps(parts, sort_keys=True, default=str), tuple(shape),
         tuple(d.id for d in mesh.devices.flat))
  if key not in _SAMPLERS:
    if len(_SAMPLERS) >= _MAX_CACHED_SAMPLERS:
      _SAMPLERS.pop(next(iter(_SAMPLERS)))
    _SAMPLERS[key] = factory.build(config, shape, batch_sharding=batch_sharding)
  return _SAMPLERS[key]


def _warn_filter_steps(tdas, steps):
  """A filter file fitted for N' steps, used at another number of steps, gets a warning."""
  fitted = tdas.filter_steps
  if tdas.enabled and fitted and int(fitted) != int(steps):
    logging.warning("The TDAS filter file %s was calibrated for %d steps; this run takes %d. "
                    "Its gains fit the deviation at %d steps only: calibrate for %d "
                    "(--mode calibrate --config.calibrate.steps=%d).", tdas.filter_file,
                    fitted, steps, fitted, steps, steps)


def evaluate(config, workdir, eval_folder="eval"):
  """FID, KID, IS and frequency deviation of <workdir>/<eval_folder>/samples_*.npz -> metrics.json.

  `config.eval.samples_path` evaluates another tool's samples instead: an `arr_0` / `samples`
  .npz or a folder of PNG / JPEG images (metrics.json still goes to <workdir>/<eval_folder>/).
  Against the data's Inception statistics (config.eval.stats_file, default
  <workdir>/stats/<dataset>_<size>.npz) with the FID Inception weights (config.eval.
  inception_weights or $TDAS_INCEPTION_WEIGHTS). metrics.json is written atomically; a rerun
  recomputes it from the sample files and replaces it.
  """
  validation.check_eval_mode(config)
  if jax.process_index() != 0:  # one host evaluates the shared folder
    logging.info("Process %d: evaluation runs on process 0 only.", jax.process_index())
    return None
  out_dir = os.path.join(workdir, eval_folder)
  samples_path = str(config.eval.get("samples_path", "") or "") or out_dir
  if samples_path != out_dir or os.path.isdir(out_dir):  # (a missing folder: no samples, below)
    sample_rounds.check_writable(out_dir)
  result = evaluation.evaluate_folder(config, workdir, samples_path)
  if config.eval.get("enable_bpd", False):  # score_sde's field: bits/dim of the data as well
    result["bpd"] = _bits_per_dim(config, workdir)
  path = os.path.join(out_dir, "metrics.json")
  atomic_write_text(path, json.dumps(result, indent=2))
  kid, score = result["kid"], result["inception_score"]
  logging.info("%d samples: FID %.4f, KID %s, IS %.3f ± %.3f -> %s", result["num_samples"],
               result["fid"], "n/a" if kid is None else f"{kid['mean']:.5f}", score["mean"],
               score["std"], path)
  print(json.dumps(dict(metrics=os.path.abspath(path), num_samples=result["num_samples"],
                        fid=result["fid"], kid=None if kid is None else kid["mean"],
                        inception_score=score["mean"])))
  return result


def _bits_per_dim(config, workdir):
  """Bits/dim of the data set's evaluation split (`config.eval.bpd_*`), dequantised uniformly."""
  validation.check_sde(config)
  devices.set_matmul_precision(config)
  variables, source = checkpoints.load_variables(config, workdir)
  batch_size = (validation.positive_int(config, "eval.bpd_batch_size", allow_zero=True)
                or validation.positive_int(config, "eval.batch_size"))
  max_images = validation.positive_int(config, "eval.bpd_num_images", allow_zero=True)
  sde = sde_lib.get_sde(config)
  model = model_utils.create_model(config)
  builder = lambda v: model_utils.get_score_fn(sde, model, v,
                                               model_utils.uses_continuous_labels(config),
                                               num_scales=config.model.num_scales)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  solver = likelihood.from_config(config, sde, builder, shape)
  split = datasets.get_split(config, evaluation=True, batch_size=batch_size,
                             uniform_dequantization=True, num_epochs=1, drop_remainder=False)
  batches = (batch["image"] for batch in split.as_numpy_iterator())
  result = likelihood.data_bits_per_dim(solver, variables, batches,
                                        datasets.get_data_scaler(config), seed=config.seed,
                                        max_images=max_images)
  result["source"] = source
  return result


def likelihood_mode(config, workdir, eval_folder="eval"):
  """Bits/dim of the data set's evaluation split -> <workdir>/<eval_folder>/likelihood.json.

  The data set is the config's (`data.dataset` through tfds, `data.path`, or the packaged
  digits), dequantised uniformly as score_sde evaluates; the probability-flow ODE with the
  `eval.bpd_*` divergence and tolerances (`likelihood.py`).
  """
  validation.check_likelihood_mode(config)
  if jax.process_index() != 0:
    return None
  out_dir = os.path.join(workdir, eval_folder)
  sample_rounds.check_writable(out_dir)
  result = _bits_per_dim(config, workdir)
  path = os.path.join(out_dir, "likelihood.json")
  atomic_write_text(path, json.dumps(result, indent=2))
  logging.info("%d images: %.4f ± %.4f bits/dim -> %s", result["num_images"], result["mean"],
               result["std"], path)
  print(json.dumps(dict(likelihood=os.path.abspath(path), bpd=result["mean"],
                        num_images=result["num_images"])))
  return result


def _finite_or_none(values):
  """A float array as a JSON-safe list: NaN / inf (empty radial bins) become null."""
  return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def calibrate(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Fit TDAS's frequency filter for N' steps to the vanilla sampler's deviation (or PDS's masks).

  The sampler is `config.sampling.method` (any method with steps). Draws `calibrate.num_samples`
  vanilla samples at the full N (the reference, cached under
  <workdir>/calibration/cache/) and at N', computes Dev = S(N') / S(N) in `calibrate.transform`,
  fits the zoned filter (least squares and the paper's quantile rule) and the radial-profile
  filter, and writes <workdir>/calibration/: filters_<N'>.npz (for
  config.sampling.tdas.filter_file; its frequency filter is the `calibrate.method` fit),
  calibration_<N'>.json and calibration_<N'>.png (+ samples_<N'>.png, behaviour_<N'>.png).
  `calibrate.method = 'pds'` makes PDS's masks from the data set instead (`calibrate_pds`).
  """
  settings = project_fields.section_with_defaults(config, "calibrate")
  tdas_calibration.check_method(settings.method)
  validation.check_calibrate_mode(config, MIN_CALIBRATION_SAMPLES)
  if tdas_calibration.check_method(settings.method) in tdas_calibration.DATA_METHODS:
    return calibrate_pds(config, workdir, settings)
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


def calibrate_pds(config, workdir, settings):
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


def stats(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
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


def inpaint(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Fill the masked pixels of images (config.inpaint.*) -> <workdir>/inpaint/."""
  return controllable.run(config, workdir, "inpaint")


def colorize(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Colour the grey versions of images (config.inpaint.images) -> <workdir>/colorize/."""
  return controllable.run(config, workdir, "colorize")


def train(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Train the config's network on its data set (resumes from <workdir>/checkpoints-meta/)."""
  return train_lib.train(config, workdir)


# --mode NAME -> the function that runs it, called as fn(config, workdir, eval_folder=...).
MODES = {
    "check": check,
    "sample": sample,
    "calibrate": calibrate,
    "stats": stats,
    "eval": evaluate,
    "likelihood": likelihood_mode,
    "inpaint": inpaint,
    "colorize": colorize,
    "train": train,
}
