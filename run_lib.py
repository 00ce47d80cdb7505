"""The modes of `main.py`, one function each, and `MODES`, the table `--mode` picks from.

A mode reads the config, calls the library (`sampling.factory`, `tdas.settings`,
`evaluation.evaluate`), and writes its outputs under the workdir through the modules that own
each format (`tdas.files`, `images`, `atomic_io`). The longer modes live in modules of their own,
which the functions here call: `calibrate_mode`, `stats_mode`, `controllable` (inpaint,
colorize), `likelihood` and `train`.
"""
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import calibrate_mode
import checkpoints
import controllable
import datasets
import images
import likelihood
import sample_rounds
import sde_lib
import stats_mode
import train as train_lib
import validation
from atomic_io import atomic_write_text
from errors import UserError
from evaluation import evaluate as evaluation
from models import classifiers
from models import utils as model_utils
from sampling import devices, factory
from sampling import guidance as guidance_lib
from tdas import settings as tdas_settings

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
  guidance = setup.guidance
  classifier_variables = (None if guidance is None
                          else _classifier_variables(guidance, variables))
  suffix = _host_suffix()
  fields = sample_rounds.fingerprint(config, variables, tdas, shape, setup.sde.N, setup.eps,
                                     jax.process_count(), int(mesh.devices.size),
                                     classifier_variables)
  sample_rounds.check_folder(out_dir, suffix, fields, discard_rounds, log=logging.warning)
  replicated = devices.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  tdas = tdas.device_put(replicated)
  local_index = devices.local_row_indices(batch_sharding, shape)
  if guidance is not None:
    # Class-conditional: every round asks for the same labels, one per global row.
    labels = guidance.labels_for(batch_size)
    variables = guidance_lib.GuidedVariables(
        variables, jax.device_put(classifier_variables, replicated),
        jax.device_put(jnp.asarray(labels), replicated))
    logging.info("Guidance: labels %s (cycled), scale %g, classifier %s.",
                 list(guidance.labels), guidance.scale, guidance.classifier)

  num_rounds = int(math.ceil(num_samples / batch_size))
  seed_key = jax.random.PRNGKey(config.sampling.seed)
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
    rows = images.to_uint8(x, config.data.centered)[round_rows(r)]
    if guidance is None:
      return rows
    return dict(samples=rows, labels=labels[local_index][round_rows(r)])

  rounds_run = sample_rounds.sample_missing(
      out_dir, suffix, fields, num_rounds, lambda r: int(round_rows(r).sum()), draw,
      shared_job=jax.process_count() > 1, every_process=devices.all_processes,
      log=lambda level, message: getattr(logging, level)("%s", message))

  # The pictures show process 0's rows (every process samples the vanilla batch: a collective).
  with np.load(sample_rounds.round_path(out_dir, 0, suffix)) as round_zero:
    first = round_zero["samples"][:images.GRID_MAX_IMAGES]
    first_labels = round_zero["labels"][:len(first)] if guidance is not None else None
  writes_pictures = jax.process_index() == 0
  if writes_pictures:
    grid = (images.image_grid(first) if guidance is None
            else images.class_grid(first, first_labels))  # a row per class
    images.save_png(os.path.join(out_dir, "samples_grid.png"), grid)
    logging.info("samples_grid.png shows the first %d samples (round 0)%s.", len(first),
                 "" if guidance is None else ", a row per class")
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
      tdas=tdas.describe(), guidance=None if guidance is None else guidance.describe(),
      device_count=mesh.devices.size, process_count=jax.process_count(),
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


def _classifier_variables(guidance, network_variables):
  """The guiding classifier's variables: the analytic model's own, or the params file
  `sampling.guidance.checkpoint` (`models.classifiers.load_params`)."""
  if guidance.classifier == guidance_lib.ANALYTIC:
    return network_variables
  if not guidance.checkpoint:
    raise UserError("config.sampling.guidance.checkpoint is empty: set it to the classifier's "
                    "params file (score_sde's classifier checkpoint, a flax msgpack).")
  return classifiers.load_params(guidance.classifier_config, guidance.checkpoint)


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

  With `config.eval.metric = 'digits'` (the digits demo) the digits metric classifier's measures
  instead, with the share of samples read as the class each was asked for.

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
  if config.eval.metric == "digits":
    result = evaluation.evaluate_digits_folder(samples_path)
  else:
    result = evaluation.evaluate_folder(config, workdir, samples_path)
  if config.eval.get("enable_bpd", False):  # score_sde's field: bits/dim of the data as well
    result["bpd"] = _bits_per_dim(config, workdir)
  path = os.path.join(out_dir, "metrics.json")
  atomic_write_text(path, json.dumps(result, indent=2))
  if result["metric"] == "digits":
    accuracy = result["accuracy"]
    logging.info("%d samples: Fréchet distance %.3f (digits classifier), accuracy %s -> %s",
                 result["num_samples"], result["frechet_distance"],
                 "n/a (no labels)" if accuracy is None else f"{accuracy:.3f}", path)
    headline = dict(frechet_distance=result["frechet_distance"], accuracy=accuracy)
  else:
    kid, score = result["kid"], result["inception_score"]
    logging.info("%d samples: FID %.4f, KID %s, IS %.3f ± %.3f -> %s", result["num_samples"],
                 result["fid"], "n/a" if kid is None else f"{kid['mean']:.5f}", score["mean"],
                 score["std"], path)
    headline = dict(fid=result["fid"], kid=None if kid is None else kid["mean"],
                    inception_score=score["mean"])
  print(json.dumps(dict(metrics=os.path.abspath(path), num_samples=result["num_samples"],
                        **headline)))
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


def calibrate(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Fit TDAS's frequency filter for N' steps to the vanilla sampler's deviation (or PDS's masks).

  Writes <workdir>/calibration/: filters_<N'>.npz (for config.sampling.tdas.filter_file),
  calibration_<N'>.json and PNGs; with `calibrate.method='pds'`, PDS's masks (`calibrate_mode`).
  """
  return calibrate_mode.run(config, workdir)


def stats(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Data-set statistics: mean image and space filter, frequency statistics, analytic Gaussian.

  Reads `config.data.path`; writes <workdir>/stats/ (`stats_mode`).
  """
  return stats_mode.run(config, workdir)


def inpaint(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Fill the masked pixels of images (config.inpaint.*) -> <workdir>/inpaint/."""
  return controllable.run(config, workdir, "inpaint")


def colorize(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Colour the grey versions of images (config.inpaint.images) -> <workdir>/colorize/."""
  return controllable.run(config, workdir, "colorize")


def train(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Train the config's network on its data set (resumes from <workdir>/checkpoints-meta/).

  A config with a `classifier` section trains that noise-conditional classifier instead
  (`train_classifier`).
  """
  if "classifier" in config:
    import train_classifier  # pylint: disable=g-import-not-at-top
    return train_classifier.train(config, workdir)
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
