"""The modes of `main.py`: everything that reads or writes files lives here."""
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import checkpoints
from atomic_io import atomic_savez, atomic_write_text  # pylint: disable=unused-import
import sde_lib
from models import utils as model_utils
from sampling import devices
from sampling import ode as ode_sampling
from sampling import pc as pc_sampling
from tdas import filter_file, setup as tdas_setup


class SamplingError(RuntimeError):
  """A sampling run that produced unusable samples (NaN or inf)."""


def checkpoint_location(config, workdir):
  """Where the mode's checkpoint is read from: `sampling.checkpoint_dir` or <workdir>/checkpoints."""
  directory = config.sampling.get("checkpoint_dir", "") or os.path.join(workdir, "checkpoints")
  return directory, int(config.sampling.get("checkpoint_step", 0))


def check(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Load the configured checkpoint and check that it fits the config's network.

  Prints one JSON line: the checkpoint file, its training step, the model and its parameter count.
  """
  directory, step = checkpoint_location(config, workdir)
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


def set_matmul_precision(config):
  """Applies `sampling.matmul_precision` ('highest' keeps the released networks exact on GPUs,
  where 'default' runs float32 convolutions as TF32: about 2× faster, ~1e-3 relative error)."""
  precision = config.sampling.matmul_precision
  if precision not in ("default", "high", "highest"):
    raise ValueError(f"config.sampling.matmul_precision={precision!r} must be 'default', 'high' "
                     "or 'highest'.")
  jax.config.update("jax_default_matmul_precision", precision)


def load_variables(config, workdir):
  """The network's variables and where they came from.

  Learned networks load the configured checkpoint; the analytic model builds its target from the
  config (it has nothing to load).
  """
  model_cls = model_utils.get_model(config.model.name)
  variables_from_config = getattr(model_cls, "variables_from_config", None)
  if variables_from_config is not None:
    return variables_from_config(config), f"{config.model.name} (built from the config)"
  directory, step = checkpoint_location(config, workdir)
  path = checkpoints.find_checkpoint(directory, step)
  variables, step = checkpoints.load_checkpoint(path, config)
  logging.info("Loaded %s (step %d).", path, step)
  return variables, os.path.abspath(path)


def sampling_steps(config):
  """(N', k): the sampler's number of steps and the speed-up over model.num_scales."""
  full = config.model.num_scales
  num_steps, speedup = int(config.sampling.num_steps), float(config.sampling.speedup)
  if num_steps < 0:
    raise ValueError(f"config.sampling.num_steps must be >= 0 (0 = model.num_scales), got "
                     f"{num_steps}.")
  if num_steps == 0:
    if not speedup > 0:
      raise ValueError(f"config.sampling.speedup must be positive, got {speedup}.")
    num_steps = max(1, int(round(full / speedup)))
  return num_steps, full / num_steps


def load_tdas_filters(config):
  """Reads the files `config.sampling.tdas` names and builds the filters (None when TDAS is off)."""
  tdas = config.sampling.tdas
  if not tdas.enabled:
    return None
  shape = tdas_setup.image_shape(config)
  loaded = filter_file.load_filters(tdas.filter_file, shape) if tdas.filter_file else None
  mean_image = None
  if tdas.use_space and tdas.space_file and loaded is None:
    mean_image = read_mean_image(tdas.space_file, shape)
  return tdas_setup.build_filters(config, mean_image=mean_image, loaded=loaded)


def read_mean_image(path, shape):
  """The data's mean image (H, W, C) in [0, 1] from an `.npz` (key `mean`) or an image file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.sampling.tdas.space_file={path!r} does not exist (make it "
                            "with --mode stats, or clear the field to run without a space filter).")
  if path.endswith(".npz"):
    with np.load(path) as data:
      if "mean" not in data.files:
        raise ValueError(f"Space file {path!r} has no `mean` array (it holds {data.files}).")
      mean = np.asarray(data["mean"], np.float64)
  else:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    mean = np.asarray(Image.open(path).convert("RGB" if shape[2] == 3 else "L"),
                      np.float64) / 255.0
    mean = mean.reshape(mean.shape[0], mean.shape[1], -1)
  if tuple(mean.shape) != tuple(shape):
    raise ValueError(f"Space file {path!r} holds a {mean.shape} mean image; the config's images "
                     f"are {shape}.")
  return mean


def build_sampler(config, model, shape, batch_sharding=None):
  """The configured sampler (PC or ODE) for global batches of `shape`, and its SDE and N'."""
  num_steps, speedup = sampling_steps(config)
  sde = sde_lib.get_sde(config, num_steps)
  eps = sde.sampling_eps * (speedup if config.sampling.eps_scale_with_speedup else 1.0)
  continuous = model_utils.uses_continuous_labels(config)

  def score_fn_builder(variables):
    return model_utils.get_score_fn(sde, model, variables, continuous,
                                    num_scales=config.model.num_scales)

  tdas = tdas_setup.effective_tdas(config)  # a preset may set the transform
  settings = pc_sampling.TDASSettings(transform=tdas.transform, apply_to=tdas.apply_to)
  method = str(config.sampling.method).lower()
  if method == "pc":
    sampler = pc_sampling.PCSampler(
        sde, score_fn_builder, shape, predictor=config.sampling.predictor,
        corrector=config.sampling.corrector, snr=config.sampling.snr,
        n_steps_each=config.sampling.n_steps_each,
        probability_flow=config.sampling.probability_flow, eps=eps,
        denoise=config.sampling.noise_removal, tdas=settings, batch_sharding=batch_sharding)
  elif method == "ode":
    ode = config.sampling.ode
    sampler = ode_sampling.ODESampler(
        sde, score_fn_builder, shape, solver=ode.solver, rtol=ode.rtol, atol=ode.atol, eps=eps,
        denoise=config.sampling.noise_removal, tdas=settings, batch_sharding=batch_sharding)
  else:
    raise ValueError(f"config.sampling.method={config.sampling.method!r} must be 'pc' or 'ode'.")
  return sampler, sde, num_steps, speedup, eps


def run_sampler(sampler, rng, variables, filters, progress_label=None, what=None):
  """One global batch of samples in model space: (this host's rows as numpy, NFE).

  PC runs in chunks so a progress bar can follow it. With `what` (e.g. "Round 3"), a batch holding
  NaN or inf raises SamplingError naming it, so that the caller writes nothing for it.
  """
  if isinstance(sampler, ode_sampling.ODESampler):
    x, nfe = sampler.sample(rng, variables, filters)
    nfe = int(nfe)
  else:
    state = sampler.init(rng, filters)
    chunk = sampler.chunk_size()
    with tqdm(total=sampler.num_steps, desc=progress_label, unit="step", leave=False,
              disable=progress_label is None) as bar:
      for start in range(0, sampler.num_steps, chunk):
        state = sampler.advance(state, rng, variables, filters, start, num=chunk)
        jax.block_until_ready(state)
        bar.update(min(chunk, sampler.num_steps - start))
    x, nfe = sampler.finish(state), sampler.nfe
  x = devices.local_rows(x)
  if what is not None and not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)))
    raise SamplingError(
        f"{what}: {bad} of {x.shape[0]} samples contain NaN or inf; nothing was written for it. "
        f"With {getattr(sampler, 'num_steps', 'these')} steps the sampler may be unstable (try "
        "more steps, a smaller config.sampling.snr, or check the checkpoint).")
  return x, nfe


def to_uint8(x, centered: bool) -> np.ndarray:
  """Model-space samples -> uint8 images (data.centered maps [-1, 1] back to [0, 1])."""
  x = np.asarray(x, np.float32)
  if centered:
    x = (x + 1.0) / 2.0
  return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int = 0) -> np.ndarray:
  """(N, H, W, C) uint8 -> one (rows·H, columns·W, C) uint8 grid with 2-px gaps."""
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  gap = 2
  grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), 255, np.uint8)
  for k in range(n):
    r, col = divmod(k, columns)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = images[k]
  return grid


def save_png(path, image: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = image[..., 0] if image.shape[-1] == 1 else image
  Image.fromarray(image).save(path)


def save_comparison(path, vanilla: np.ndarray, tdas: np.ndarray, steps: int, nfe: int):
  """Side-by-side grids of the same seed without and with TDAS."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
  for axis, images, title in ((axes[0], vanilla, "vanilla"), (axes[1], tdas, "TDAS")):
    grid = image_grid(images)
    axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
    axis.set_title(f"{title}: {steps} steps, {nfe} NFE")
    axis.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def _host_suffix():
  return "" if jax.process_count() == 1 else f"_host{jax.process_index()}"


def sample(config, workdir, eval_folder="eval"):
  """Draw config.eval.num_samples samples (vanilla or TDAS) into <workdir>/<eval_folder>/.

  Writes samples_<round>.npz (uint8 NHWC under `samples`), a PNG grid, sampling.json and, with
  TDAS on, vanilla_vs_tdas.png. Finished rounds are skipped on a rerun.
  """
  set_matmul_precision(config)
  distributed = config.sampling.distributed
  devices.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                 distributed.process_id)
  out_dir = os.path.join(workdir, eval_folder)
  os.makedirs(out_dir, exist_ok=True)
  model = model_utils.create_model(config)
  variables, source = load_variables(config, workdir)
  filters = load_tdas_filters(config)

  mesh = devices.batch_mesh()
  batch_size = int(config.eval.batch_size)
  devices.check_batch_size(batch_size, mesh)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler, _, num_steps, speedup, eps = build_sampler(
      config, model, shape, batch_sharding=devices.batch_sharding(mesh))
  replicated = devices.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  if filters is not None:
    filters = jax.device_put(filters, replicated)

  num_rounds = int(math.ceil(config.eval.num_samples / batch_size))
  seed_key = jax.random.PRNGKey(config.sampling.seed)
  suffix = _host_suffix()
  logging.info("Sampling %d rounds of %d with %d steps (speed-up %.3g, eps %.3g), TDAS %s, on %d "
               "devices.", num_rounds, batch_size, num_steps, speedup, eps,
               "on" if filters is not None else "off", mesh.devices.size)
  seconds, rounds_run, nfe = 0.0, 0, sampler.nfe if hasattr(sampler, "nfe") else None
  for r in tqdm(range(num_rounds), desc="rounds", unit="round"):
    path = os.path.join(out_dir, f"samples_{r}{suffix}.npz")
    if os.path.exists(path):
      logging.info("Round %d already written (%s); skipping.", r, path)
      continue
    start = time.perf_counter()
    x, nfe = run_sampler(sampler, jax.random.fold_in(seed_key, r), variables, filters,
                         progress_label=f"round {r}", what=f"Round {r}")
    seconds += time.perf_counter() - start
    rounds_run += 1
    atomic_savez(path, samples=to_uint8(x, config.data.centered))

  first = np.load(os.path.join(out_dir, f"samples_0{suffix}.npz"))["samples"][:64]
  save_png(os.path.join(out_dir, "samples_grid.png"), image_grid(first))
  if filters is not None and config.sampling.vanilla_comparison:
    vanilla_sampler = build_sampler(config, model, shape, devices.batch_sharding(mesh))[0]
    vanilla, _ = run_sampler(vanilla_sampler, jax.random.fold_in(seed_key, 0), variables, None,
                             progress_label="vanilla comparison")
    vanilla = to_uint8(vanilla, config.data.centered)[:64]
    save_comparison(os.path.join(out_dir, "vanilla_vs_tdas.png"), vanilla, first, num_steps, nfe)

  summary = dict(
      num_samples=num_rounds * batch_size, rounds=num_rounds, rounds_this_run=rounds_run,
      batch_size=batch_size, steps=num_steps, speedup=speedup, eps=eps, nfe=nfe,
      method=config.sampling.method, predictor=config.sampling.predictor,
      corrector=config.sampling.corrector, source=source,
      tdas=tdas_setup.describe(config, filters), device_count=mesh.devices.size,
      process_count=jax.process_count(), seconds=seconds,
      seconds_per_step=(seconds / (rounds_run * num_steps)) if rounds_run else None)
  atomic_write_text(os.path.join(out_dir, f"sampling{suffix}.json"),
                    json.dumps(summary, indent=2))
  logging.info("Wrote %d rounds to %s (%.1f s this run).", rounds_run, out_dir, seconds)
  return summary


def evaluate(config, workdir, eval_folder="eval"):
  """FID, KID, IS and frequency deviation of <workdir>/<eval_folder>/samples_*.npz -> metrics.json.

  Against the data's Inception statistics (config.eval.stats_file, default
  <workdir>/stats/<dataset>_<size>.npz) with the FID Inception weights (config.eval.
  inception_weights or $TDAS_INCEPTION_WEIGHTS). metrics.json is written atomically; a rerun
  recomputes it from the sample files and replaces it.
  """
  from evaluation import evaluate as evaluation  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:  # one host evaluates the shared folder
    logging.info("Process %d: evaluation runs on process 0 only.", jax.process_index())
    return None
  out_dir = os.path.join(workdir, eval_folder)
  result = evaluation.evaluate_folder(config, workdir, out_dir)
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


# ---------------------------------------------------------------------------------------------
# --mode calibrate and --mode stats (TDAS calibration and data-set statistics).

# Fewer images than this make the per-coordinate statistics too noisy to fit a filter to.
MIN_CALIBRATION_SAMPLES = 16
# Images per preview grid kept with the cached sample statistics.
_PREVIEW_IMAGES = 16


def _project_section(config, section):
  """`config.<section>` with the project's defaults filled in for fields a config lacks."""
  from configs import project_fields  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  settings = ml_collections.ConfigDict(project_fields.section_defaults(section))
  if section in config:
    for key, value in config[section].items():
      settings[key] = value
  return settings


def calibration_steps(config):
  """(N, N') of `--mode calibrate`: model.num_scales and the target number of steps.

  N' is `calibrate.steps`, else round(N / `calibrate.speedup`), else the sampling's own N'.
  """
  settings = _project_section(config, "calibrate")
  full = int(config.model.num_scales)
  steps, speedup = int(settings.steps), float(settings.speedup)
  if steps < 0:
    raise ValueError(f"config.calibrate.steps must be >= 0 (0 = from calibrate.speedup), got "
                     f"{steps}.")
  if speedup < 0:
    raise ValueError(f"config.calibrate.speedup must be >= 0 (0 = unset), got {speedup}.")
  if steps == 0:
    steps = max(1, int(round(full / speedup))) if speedup > 0 else sampling_steps(config)[0]
  return full, steps


def _vanilla_config(config, steps):
  """A copy of `config` that samples vanilla (TDAS off) with `steps` steps."""
  copied = config.copy_and_resolve_references()
  with copied.unlocked():
    copied.sampling.num_steps = int(steps)
    copied.sampling.speedup = 1.0
    copied.sampling.tdas.enabled = False
    copied.sampling.tdas.preset = ""
  return copied


def _calibration_key(config, source, seed, batch_size):
  """A short hash of everything that decides a calibration sample set (not N': it is in the name).
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  sampling = {k: v for k, v in config.sampling.to_dict().items()
              if k not in ("num_steps", "speedup", "tdas", "vanilla_comparison", "seed",
                           "distributed", "matmul_precision")}
  described = dict(model=config.model.to_dict(), sampling=sampling,
                   training={k: config.training.get(k) for k in ("sde", "continuous")},
                   data={k: config.data.get(k) for k in ("image_size", "num_channels",
                                                          "centered")},
                   source=source, seed=int(seed), batch_size=int(batch_size))
  text = json.dumps(described, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def to_data_scale(x, centered: bool) -> np.ndarray:
  """Model-space samples -> float data scale [0, 1] (no clipping: statistics, not pictures)."""
  x = np.asarray(x, np.float64)
  return (x + 1.0) / 2.0 if centered else x


def sample_set_statistics(config, model, variables, steps, num_samples, batch_size, seed,
                          directory, label):
  """Frequency statistics of `num_samples` vanilla samples with `steps` steps, cached per batch.

  Batch k is drawn with key fold_in(PRNGKey(seed), k) and its statistics (`tdas.stats`
  `ImageStatistics`, data scale) are written to `<directory>/batch_<k>.npz`; a batch already
  there is read instead of drawn, so a set is computed once and an interrupted run resumes.
  Whole batches are drawn: the set holds ceil(num_samples / batch_size) · batch_size images.

  Returns:
    (ImageStatistics, preview uint8 (<=16, H, W, C), nfe or None when every batch was cached).
  """
  from tdas import stats as tdas_stats  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  config = _vanilla_config(config, steps)
  mesh = devices.batch_mesh()
  devices.check_batch_size(batch_size, mesh, "config.calibrate.batch_size")
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  num_batches = int(math.ceil(num_samples / batch_size))
  total, preview, sampler, nfe = tdas_stats.ImageStatistics(), None, None, None
  key = jax.random.PRNGKey(seed)
  for k in tqdm(range(num_batches), desc=f"{label} ({steps} steps)", unit="batch"):
    path = os.path.join(directory, f"batch_{k}.npz")
    if os.path.exists(path):
      with np.load(path) as cached:
        total.merge(tdas_stats.ImageStatistics.from_state(cached))
        if k == 0:
          preview = cached["preview"]
      continue
    if sampler is None:
      sampler = build_sampler(config, model, shape, devices.batch_sharding(mesh))[0]
      variables = jax.device_put(variables, devices.replicated(mesh))
    x, nfe = run_sampler(sampler, jax.random.fold_in(key, k), variables, None,
                         progress_label=f"{label} batch {k}",
                         what=f"The {label} set ({steps} steps), batch {k}")
    batch_stats = tdas_stats.ImageStatistics().update(to_data_scale(x, config.data.centered))
    arrays = batch_stats.state()
    if k == 0:
      preview = to_uint8(x[:_PREVIEW_IMAGES], config.data.centered)
      arrays["preview"] = preview
    atomic_savez(path, **arrays)
    total.merge(batch_stats)
  return total, preview, nfe


def _read_data_amplitude(path, transform, shape):
  """The data set's (H, W) mean amplitude from a `--mode stats` frequency file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.calibrate.data_stats_file={path!r} does not exist (make it "
                            "with --mode stats, or clear the field).")
  with np.load(path) as data:
    name = f"{transform}_amplitude"
    if name not in data.files:
      raise ValueError(f"Frequency statistics file {path!r} has no `{name}` (it holds "
                       f"{sorted(data.files)}).")
    amplitude = np.asarray(data[name], np.float64)
  if amplitude.shape != tuple(shape[:2]):
    raise ValueError(f"Frequency statistics file {path!r} is for {amplitude.shape} images; the "
                     f"config's are {tuple(shape[:2])}.")
  return amplitude


def _finite_or_none(values):
  """A float array as a JSON-safe list: NaN / inf (empty radial bins) become null."""
  return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def calibrate(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Fit TDAS's frequency filter for N' steps to the vanilla sampler's spectral deviation.

  Draws `calibrate.num_samples` vanilla samples at the full N (the reference, cached under
  <workdir>/calibration/cache/) and at N', computes Dev = S(N') / S(N) in `calibrate.transform`,
  fits the zoned filter (least squares and the paper's quantile rule) and the radial-profile
  filter, and writes <workdir>/calibration/: filters_<N'>.npz (for
  config.sampling.tdas.filter_file; its frequency filter is the `calibrate.method` fit),
  calibration_<N'>.json and calibration_<N'>.png (+ samples_<N'>.png, behaviour_<N'>.png).
  """
  from tdas import calibration as tdas_calibration  # pylint: disable=g-import-not-at-top
  from tdas import filters as tdas_filters  # pylint: disable=g-import-not-at-top
  from tdas import plots  # pylint: disable=g-import-not-at-top
  from tdas import stats as tdas_stats  # pylint: disable=g-import-not-at-top
  from tdas.transforms import check_transform  # pylint: disable=g-import-not-at-top
  set_matmul_precision(config)
  settings = _project_section(config, "calibrate")
  if str(config.sampling.method).lower() != "pc":
    raise ValueError(f"--mode calibrate measures the PC sampler's deviation under fewer steps; "
                     f"config.sampling.method={config.sampling.method!r} must be 'pc'.")
  full, steps = calibration_steps(config)
  if steps > full:
    raise ValueError(f"config.calibrate.steps={steps} exceeds model.num_scales={full}: the "
                     "accelerated sampler must take at most the full number of steps.")
  num_samples = int(settings.num_samples)
  if num_samples < MIN_CALIBRATION_SAMPLES:
    raise ValueError(f"config.calibrate.num_samples={num_samples} is too few: the statistics need "
                     f"at least {MIN_CALIBRATION_SAMPLES} samples per set (the paper uses 200).")
  transform = check_transform(settings.transform or tdas_setup.effective_tdas(config).transform)
  method = tdas_calibration.check_method(settings.method)
  num_bins = int(settings.num_bins)
  if num_bins < 1:
    raise ValueError(f"config.calibrate.num_bins={num_bins} must be >= 1.")
  batch_size = int(settings.batch_size) or int(config.eval.batch_size)
  seed = int(settings.seed)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  out_dir = os.path.join(workdir, "calibration")
  os.makedirs(out_dir, exist_ok=True)
  if steps == full:
    logging.warning("Calibrating for N' = N = %d: the deviation is 1 by construction.", full)

  model = model_utils.create_model(config)
  variables, source = load_variables(config, workdir)
  key = _calibration_key(config, source, seed, batch_size)
  cache = os.path.join(out_dir, "cache")
  start = time.perf_counter()
  reference, reference_preview, _ = sample_set_statistics(
      config, model, variables, full, num_samples, batch_size, seed,
      os.path.join(cache, f"reference_{full}_{key}"), "reference")
  accelerated, accelerated_preview, _ = sample_set_statistics(
      config, model, variables, steps, num_samples, batch_size, seed,
      os.path.join(cache, f"accelerated_{steps}_{key}"), "accelerated")
  sampling_seconds = time.perf_counter() - start
  s_reference, s_accelerated = reference.amplitude(transform), accelerated.amplitude(transform)
  result = tdas_calibration.calibrate_frequency_filter(
      s_reference, s_accelerated, shape[2], transform, method, num_bins,
      tuple(settings.quantiles), float(settings.max_gain))

  tdas = config.sampling.tdas
  space = np.ones(shape, np.float32)
  if tdas.use_space and tdas.space_file:
    space = tdas_filters.space_filter(read_mean_image(tdas.space_file, shape), tdas.space_f,
                                      tdas.space_alpha)
  fits = dict(zones=result["zones"], quantile=result["quantile"], one_zone=result["one_zone"],
              radial_gains=[float(g) for g in result["radial_gains"]])
  info = dict(made_by="calibrate", transform=transform, method=method, steps=steps,
              full_steps=full, num_samples=accelerated.count, seed=seed,
              space_file=tdas.space_file if tdas.use_space else "", **fits)
  filter_path = os.path.join(out_dir, f"filters_{steps}.npz")
  filter_file.save_filters(filter_path, space, result["freq"], info)

  behaviour = None
  if settings.data_stats_file:
    data_amplitude = _read_data_amplitude(settings.data_stats_file, transform, shape)
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
                         {f"reference: {full} steps": image_grid(reference_preview),
                          f"accelerated: {steps} steps": image_grid(accelerated_preview)},
                         f"vanilla samples, seed {seed} (first batch)")

  summary = dict(
      steps=steps, full_steps=full, speedup=full / steps, transform=transform, method=method,
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


def stats(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Data-set statistics: mean image and space filter, frequency statistics, analytic Gaussian.

  Reads the data set at `config.data.path` (an image folder or an .npz with `images`) and writes
  under <workdir>/stats/: space_<dataset>_<size>.npz (`mean` (H, W, C) in [0, 1], for
  config.sampling.tdas.space_file, and `space`, the filter made with tdas.space_f / space_alpha),
  frequency_<dataset>_<size>.npz (`dct_amplitude`, `dft_amplitude` (H, W), `num_images`),
  analytic_<dataset>_<size>.npz (`mean`, `dct_variance`, for config.model.target_file), a PNG for
  each of the first two and stats_<dataset>_<size>.json.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  from evaluation import inception as inception_lib  # pylint: disable=g-import-not-at-top
  from evaluation import statistics as evaluation_statistics  # pylint: disable=g-import-not-at-top
  from models import analytic  # pylint: disable=g-import-not-at-top
  from tdas import filters as tdas_filters  # pylint: disable=g-import-not-at-top
  from tdas import plots  # pylint: disable=g-import-not-at-top
  from tdas import stats as tdas_stats  # pylint: disable=g-import-not-at-top
  path = _project_section(config, "data").path
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
  stem = evaluation_statistics.dataset_stem(config.data.get("dataset", "data"), size)
  files = {name: os.path.join(out_dir, f"{name}_{stem}.npz")
           for name in ("space", "frequency", "analytic")}
  atomic_savez(files["space"], mean=mean.astype(np.float32), space=space,
               space_f=np.asarray(tdas.space_f), space_alpha=np.asarray(tdas.space_alpha),
               num_images=np.asarray(statistics.count))
  dct_amplitude, dft_amplitude = statistics.amplitude("dct"), statistics.amplitude("dft")
  atomic_savez(files["frequency"], dct_amplitude=dct_amplitude, dft_amplitude=dft_amplitude,
               dct_amplitude_per_channel=statistics.amplitude("dct", average_channels=False),
               dft_amplitude_per_channel=statistics.amplitude("dft", average_channels=False),
               num_images=np.asarray(statistics.count))
  atomic_savez(files["analytic"], mean=target_mean, dct_variance=dct_variance,
               num_images=np.asarray(statistics.count))
  title = f"{config.data.get('dataset', 'data')} {size} px"
  plots.plot_space(os.path.join(out_dir, f"space_{stem}.png"), mean, space,
                   f"{title}: space_f={tdas.space_f}, space_alpha={tdas.space_alpha}")
  plots.plot_frequency_statistics(os.path.join(out_dir, f"frequency_{stem}.png"), dct_amplitude,
                                  dft_amplitude, statistics.count, title)
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
    inception_path = evaluation_statistics.stats_path(workdir, config.data.get("dataset", "data"),
                                                      size)
    evaluation_statistics.save_statistics(inception_path, features,
                                          dataset=config.data.get("dataset", "data"),
                                          image_size=size)
    summary["files"]["inception"] = os.path.abspath(inception_path)
  atomic_write_text(os.path.join(out_dir, f"stats_{stem}.json"), json.dumps(summary, indent=2))
  logging.info("Statistics of %d images of %s written to %s.", statistics.count, path, out_dir)
  return summary


# ---------------------------------------------------------------------------------------------
# --mode train (score_sde's training loop: losses.py for the maths, datasets.py for the data).


class TrainingError(ValueError):
  """A training run that cannot go on (a NaN loss, a model that has nothing to train)."""


# Fields that change how long a run is or what it writes, never the compiled step.
_RUN_LENGTH_FIELDS = ("n_iters", "snapshot_freq", "log_freq", "eval_freq",
                      "snapshot_freq_for_preemption", "snapshot_sampling")
_TRAIN_FUNCTIONS = {}
_SNAPSHOT_SAMPLERS = {}


def _crossed(previous: int, step: int, every: int) -> bool:
  """Whether the steps (previous, step] contain a multiple of `every` (> 0)."""
  return every > 0 and step // every > previous // every


def _compiled_once_unoptimised(jitted):
  """`jitted`, compiled at its first call without XLA's backend optimisations: for a program that
  runs once, like parameter initialisation, whose hundreds of random initialisers otherwise take
  ~5x longer to compile on CPUs than the program takes to run."""
  compiled = []

  def call(*args):
    if not compiled:
      lowered = jitted.lower(*args)
      try:
        compiled.append(lowered.compile(compiler_options={"xla_backend_optimization_level": 0}))
      except Exception:  # pylint: disable=broad-except  (a backend without that option)
        compiled.append(lowered.compile())
    return compiled[0](*args)

  return call


def _compiled_key(config, mesh, *sections):
  """What a compiled training (or snapshot-sampling) program depends on, as a hashable key."""
  training = {k: v for k, v in config.training.to_dict().items() if k not in _RUN_LENGTH_FIELDS}
  parts = dict(model=config.model.to_dict(), optim=config.optim.to_dict(),
               data=config.data.to_dict(), training=training)
  parts.update({name: config[name].to_dict() for name in sections})
  return (json.dumps(parts, sort_keys=True, default=str), tuple(d.id for d in mesh.devices.flat))


def train_functions(config, mesh):
  """(init, train_step, eval_step), jitted for `mesh`, shared by every run of the same network,
  optimiser and batch (cached: a resumed run in the same process compiles nothing).

  init(rng) -> TrainState (replicated); train_step(state, images (n_jitted, B, H, W, C)) ->
  (state, losses (n_jitted,)); eval_step(state, images (B, H, W, C), rng) -> loss of the EMA
  weights. Images are global arrays in [0, 1], sharded over the mesh's `batch` axis.
  """
  import functools  # pylint: disable=g-import-not-at-top
  import datasets  # pylint: disable=g-import-not-at-top
  import losses  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  key = _compiled_key(config, mesh)
  if key not in _TRAIN_FUNCTIONS:
    model = model_utils.create_model(config)
    optimizer = losses.get_optimizer(config)
    steps = losses.get_step_fns(config, sde_lib.get_sde(config), model, optimizer,
                                scaler=datasets.get_data_scaler(config))
    replicated = devices.replicated(mesh)
    steps_sharding = NamedSharding(mesh, PartitionSpec(None, "batch"))
    init = _compiled_once_unoptimised(jax.jit(
        functools.partial(losses.init_train_state, config, model, optimizer),
        out_shardings=replicated))
    train_step = jax.jit(steps.train, in_shardings=(replicated, steps_sharding),
                         out_shardings=(replicated, replicated), donate_argnums=0)
    eval_step = jax.jit(steps.eval, in_shardings=(replicated, devices.batch_sharding(mesh),
                                                  replicated), out_shardings=replicated)
    _TRAIN_FUNCTIONS[key] = (init, train_step, eval_step)
  return _TRAIN_FUNCTIONS[key]


class _OrbaxInfoFilter:
  """Drops orbax's INFO lines (dozens per save) from the absl log; its warnings still show."""

  def filter(self, record):
    import logging as python_logging  # pylint: disable=g-import-not-at-top
    return record.levelno >= python_logging.WARNING or "orbax" not in record.pathname


def _quiet_orbax():
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxInfoFilter())


def _train_meta(config, step):
  return dict(step=int(step), model=config.model.name, image_size=int(config.data.image_size),
              num_channels=int(config.data.num_channels), sde=str(config.training.sde),
              continuous=bool(config.training.continuous), dataset=str(config.data.dataset))


def _save_state(manager, n, state, config):
  variables = state.sampling_variables()
  train_part = dict(step=state.step, params=state.params, opt_state=state.opt_state,
                    rng=state.rng)
  checkpoints.save_training(manager, n, variables, train_part, _train_meta(config, state.step))


def _restore_state(manager, n, fresh):
  """The TrainState of checkpoint_<n>, shaped like `fresh` (host arrays)."""
  variables, train_part, meta = checkpoints.restore_training(
      manager, n, fresh.sampling_variables(),
      dict(step=fresh.step, params=fresh.params, opt_state=fresh.opt_state, rng=fresh.rng))
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return fresh.replace(step=train_part["step"], params=train_part["params"],
                       opt_state=train_part["opt_state"], params_ema=variables["params"],
                       model_state=model_state, rng=train_part["rng"]), meta


def log_scalars(writer, step: int, **scalars):
  """One line on the console and one TensorBoard scalar per value (process 0 writes)."""
  logging.info("step: %d, %s", step, ", ".join(f"{k}: {v:.5e}" for k, v in scalars.items()))
  if writer is not None:
    for name, value in scalars.items():
      writer.add_scalar(name, value, step)


def _snapshot_samples(config, sampler, state, step, sample_dir):
  """Draws one batch with the EMA weights (vanilla PC / ODE sampler) -> sample.npz, sample.png."""
  x, _ = run_sampler(sampler, jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                     state.sampling_variables(), None)
  images = to_uint8(x, config.data.centered)
  if jax.process_index() == 0:
    out = os.path.join(sample_dir, f"iter_{step}")
    os.makedirs(out, exist_ok=True)
    atomic_savez(os.path.join(out, "sample.npz"), samples=images)
    save_png(os.path.join(out, "sample.png"), image_grid(images[:64]))


def train(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Train the config's network on its data set (resumes from <workdir>/checkpoints-meta/).

  Runs training.n_iters optimiser steps, training.n_jitted_steps per compiled call, data-parallel
  over every device. Writes <workdir>/checkpoints/checkpoint_<n>/ (EMA and full state; n = step /
  snapshot_freq, the last one at the end), <workdir>/checkpoints-meta/ (pre-emption, newest kept),
  TensorBoard events in <workdir>/tensorboard/ and, with training.snapshot_sampling, a PNG grid of
  EMA samples per snapshot in <workdir>/samples/iter_<step>/. Prints a JSON summary.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  _quiet_orbax()
  set_matmul_precision(config)
  distributed = config.sampling.distributed
  devices.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                 distributed.process_id)
  if getattr(model_utils.get_model(config.model.name), "variables_from_config", None):
    raise TrainingError(f"config.model.name={config.model.name!r} is built from the config; it "
                        "has no parameters to train.")
  training = config.training
  batch_size, n_jitted = int(training.batch_size), int(training.n_jitted_steps)
  num_train_steps = int(training.n_iters)
  if n_jitted < 1:
    raise ValueError(f"config.training.n_jitted_steps must be >= 1, got {n_jitted}.")
  mesh = devices.batch_mesh()
  devices.check_batch_size(batch_size, mesh, "config.training.batch_size")
  init, train_step, eval_step = train_functions(config, mesh)
  replicated = devices.replicated(mesh)
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  steps_sharding = NamedSharding(mesh, PartitionSpec(None, "batch"))

  os.makedirs(workdir, exist_ok=True)
  meta_manager = checkpoints.train_checkpoint_manager(
      os.path.join(workdir, "checkpoints-meta"), max_to_keep=1)
  latest = meta_manager.latest_step()  # pre-emption checkpoints are numbered by their step
  initial_step = 0 if latest is None else int(latest)
  snapshot_manager = writer = None
  try:
    # The data first: a missing data set is reported before anything compiles.
    train_iter = iter(datasets.get_split(config, additional_dim=n_jitted,
                                         start_step=initial_step).as_numpy_iterator())
    snapshot_manager = checkpoints.train_checkpoint_manager(os.path.join(workdir, "checkpoints"))
    state = init(jax.random.PRNGKey(config.seed))
    if latest is not None:
      restored, _ = _restore_state(meta_manager, latest, checkpoints.host_copy(state))
      if int(restored.step) != initial_step:
        raise checkpoints.CheckpointError(
            f"{meta_manager.directory}/checkpoint_{latest} holds step {int(restored.step)}.")
      state = jax.device_put(restored, replicated)
      logging.info("Resuming from %s/checkpoint_%d (step %d).", meta_manager.directory, latest,
                   initial_step)
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # purge_step drops events a killed run logged after its last pre-emption checkpoint.
      writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=initial_step or None)
    eval_iter = None
    sampler = None
    if training.snapshot_sampling:
      key = _compiled_key(config, mesh, "sampling")
      if key not in _SNAPSHOT_SAMPLERS:  # cached like the steps: its programs compile once
        shape = (batch_size, config.data.image_size, config.data.image_size,
                 config.data.num_channels)
        _SNAPSHOT_SAMPLERS[key] = build_sampler(config, model_utils.create_model(config), shape,
                                                devices.batch_sharding(mesh))[0]
      sampler = _SNAPSHOT_SAMPLERS[key]
    eval_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    step, start_time, last_loss, saved = initial_step, time.perf_counter(), None, []
    logging.info("Training %s on %d devices from step %d to %d, %d steps per call.",
                 config.model.name, mesh.devices.size, initial_step, num_train_steps, n_jitted)
    with tqdm(total=num_train_steps, initial=initial_step, unit="step", desc="train") as bar:
      while step < num_train_steps:
        images = jax.make_array_from_process_local_data(steps_sharding,
                                                        next(train_iter)["image"])
        state, step_losses = train_step(state, images)
        previous, step = step, step + n_jitted
        bar.update(n_jitted)
        if _crossed(previous, step, int(training.log_freq)) or step >= num_train_steps:
          last_loss = float(np.mean(jax.device_get(step_losses)))
          if not np.isfinite(last_loss):
            raise TrainingError(
                f"The training loss is {last_loss} at step {step}; the last good state is in "
                f"{os.path.join(workdir, 'checkpoints-meta')}. Lower config.optim.lr or set "
                "config.optim.grad_clip.")
          log_scalars(writer, step, training_loss=last_loss)
        if _crossed(previous, step, int(training.eval_freq)):
          if eval_iter is None:
            eval_iter = iter(datasets.get_split(config, evaluation=True,
                                                batch_size=batch_size).as_numpy_iterator())
          eval_images = jax.make_array_from_process_local_data(
              devices.batch_sharding(mesh), next(eval_iter)["image"])
          eval_loss = float(eval_step(state, eval_images, jax.random.fold_in(eval_rng, step)))
          log_scalars(writer, step, eval_loss=eval_loss)
        final = step >= num_train_steps
        if _crossed(previous, step, int(training.snapshot_freq)) or final:
          n = -(-step // int(training.snapshot_freq))  # ceil: the last snapshot may be partial
          if n in snapshot_manager.all_steps():
            logging.info("checkpoint_%d exists already (a resumed run); keeping it.", n)
          else:
            _save_state(snapshot_manager, n, state, config)
            saved.append(n)
          if sampler is not None:
            _snapshot_samples(config, sampler, state, step, os.path.join(workdir, "samples"))
        if _crossed(previous, step, int(training.snapshot_freq_for_preemption)) or final or (
            _crossed(previous, step, int(training.snapshot_freq))):
          _save_state(meta_manager, step, state, config)
  finally:
    # Let pending checkpoint writes finish (also when interrupted), then release the files.
    for manager in (meta_manager, snapshot_manager):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()
    if writer is not None:
      writer.close()
  seconds = time.perf_counter() - start_time
  summary = dict(initial_step=initial_step, step=step, training_loss=last_loss,
                 checkpoints=os.path.abspath(os.path.join(workdir, "checkpoints")),
                 snapshots_saved=saved, device_count=int(mesh.devices.size),
                 seconds=seconds, steps_per_second=(step - initial_step) / max(seconds, 1e-9))
  logging.info("Trained to step %d in %.1f s.", step, seconds)
  print(json.dumps(summary))
  return summary
