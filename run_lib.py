"""The modes of `main.py`: everything that reads or writes files lives here."""
import json
import math
import os
import tempfile
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import checkpoints
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

  tdas = config.sampling.tdas
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


def run_sampler(sampler, rng, variables, filters, progress_label=None):
  """One global batch of samples in model space, and its NFE. PC runs in chunks for progress."""
  if isinstance(sampler, ode_sampling.ODESampler):
    x, nfe = sampler.sample(rng, variables, filters)
    return x, int(nfe)
  state = sampler.init(rng, filters)
  chunk = sampler.chunk_size()
  with tqdm(total=sampler.num_steps, desc=progress_label, unit="step", leave=False,
            disable=progress_label is None) as bar:
    for start in range(0, sampler.num_steps, chunk):
      state = sampler.advance(state, rng, variables, filters, start, num=chunk)
      jax.block_until_ready(state)
      bar.update(min(chunk, sampler.num_steps - start))
  return sampler.finish(state), sampler.nfe


def to_uint8(x, centered: bool) -> np.ndarray:
  """Model-space samples -> uint8 images (data.centered maps [-1, 1] back to [0, 1])."""
  x = np.asarray(x, np.float32)
  if centered:
    x = (x + 1.0) / 2.0
  return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def atomic_savez(path, **arrays):
  """Writes an .npz so that a reader never sees a partial file (write, then rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
    np.savez_compressed(f, **arrays)
    temporary = f.name
  os.replace(temporary, path)


def atomic_write_text(path, text):
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
    f.write(text)
    temporary = f.name
  os.replace(temporary, path)


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
                         progress_label=f"round {r}")
    x = devices.local_rows(x)
    seconds += time.perf_counter() - start
    rounds_run += 1
    if not np.all(np.isfinite(x)):
      bad = int(np.sum(~np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)))
      raise SamplingError(
          f"Round {r}: {bad} of {x.shape[0]} samples contain NaN or inf; nothing was written for "
          f"this round. With {num_steps} steps the sampler may be unstable (try more steps, "
          "a smaller config.sampling.snr, or check the checkpoint).")
    atomic_savez(path, samples=to_uint8(x, config.data.centered))

  first = np.load(os.path.join(out_dir, f"samples_0{suffix}.npz"))["samples"][:64]
  save_png(os.path.join(out_dir, "samples_grid.png"), image_grid(first))
  if filters is not None and config.sampling.vanilla_comparison:
    vanilla_sampler = build_sampler(config, model, shape, devices.batch_sharding(mesh))[0]
    vanilla, _ = run_sampler(vanilla_sampler, jax.random.fold_in(seed_key, 0), variables, None,
                             progress_label="vanilla comparison")
    vanilla = to_uint8(devices.local_rows(vanilla), config.data.centered)[:64]
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
