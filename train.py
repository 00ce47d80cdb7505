"""`--mode train`: score_sde's training loop (`losses.py` for the maths, `datasets.py` for the
data, `checkpoints.py` for the files), data-parallel over every device, resumable after a
pre-emption."""
import functools
import json
import logging as python_logging
import os
import time

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

import checkpoints
import datasets
import images
import losses
import sde_lib
import validation
from atomic_io import atomic_savez
from models import utils as model_utils
from sampling import devices, factory
from errors import UserError


class TrainingError(UserError):
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


def resume_state(meta_manager, latest, state, replicated):
  """The state a run starts from: the pre-emption checkpoint `latest` (a step, or None) restored
  onto `state`'s tree and replicated, else `state`; unfinished checkpoints it skips are logged."""
  if latest is not None:
    restored, _ = _restore_state(meta_manager, latest, checkpoints.host_copy(state))
    if int(restored.step) != int(latest):
      raise checkpoints.CheckpointError(
          f"{meta_manager.directory}/checkpoint_{latest} holds step {int(restored.step)}.")
    state = jax.device_put(restored, replicated)
    logging.info("Resuming from %s/checkpoint_%d (step %d).", meta_manager.directory, latest,
                 int(latest))
  skipped = checkpoints.unfinished_checkpoints(str(meta_manager.directory))
  if skipped:
    logging.warning("Skipping %s in %s: unfinished (a save cut short); %s.", ", ".join(skipped),
                    meta_manager.directory, "starting from step 0" if latest is None else
                    f"resuming from checkpoint_{latest} instead")
  return state


def summary_writer(workdir: str, initial_step: int):
  """Process 0's TensorBoard writer in <workdir>/tensorboard/ (None elsewhere); purge_step drops
  events a killed run logged after its last pre-emption checkpoint."""
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=initial_step or None)


def close_run_files(writer, *managers):
  """Lets the managers' pending checkpoint writes finish (also when a run is interrupted), then
  releases them and the TensorBoard writer (any of them may be None)."""
  for manager in managers:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
  if writer is not None:
    writer.close()


def log_scalars(writer, step: int, **scalars):
  """One line on the console and one TensorBoard scalar per value (process 0 writes)."""
  logging.info("step: %d, %s", step, ", ".join(f"{k}: {v:.5e}" for k, v in scalars.items()))
  if writer is not None:
    for name, value in scalars.items():
      writer.add_scalar(name, value, step)


def _snapshot_samples(config, sampler, state, step, sample_dir):
  """Draws one batch with the EMA weights (vanilla PC / ODE sampler) -> sample.npz, sample.png."""
  x, _ = factory.run(sampler, jax.random.fold_in(jax.random.PRNGKey(config.seed), step),
                     state.sampling_variables(), None)
  samples = images.to_uint8(x, config.data.centered)
  if jax.process_index() == 0:
    out = os.path.join(sample_dir, f"iter_{step}")
    os.makedirs(out, exist_ok=True)
    atomic_savez(os.path.join(out, "sample.npz"), samples=samples)
    images.save_png(os.path.join(out, "sample.png"), images.image_grid(samples[:64]))


def train(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Train the config's network on its data set (resumes from <workdir>/checkpoints-meta/).

  Runs training.n_iters optimiser steps, training.n_jitted_steps per compiled call, data-parallel
  over every device. Writes <workdir>/checkpoints/checkpoint_<n>/ (EMA and full state; n = step /
  snapshot_freq, the last one at the end), <workdir>/checkpoints-meta/ (pre-emption, newest kept),
  TensorBoard events in <workdir>/tensorboard/ and, with training.snapshot_sampling, a PNG grid of
  EMA samples per snapshot in <workdir>/samples/iter_<step>/. Prints a JSON summary.
  """
  validation.check_train_mode(config)
  _quiet_orbax()
  devices.set_matmul_precision(config)
  distributed = config.sampling.distributed
  devices.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                 distributed.process_id)
  if getattr(model_utils.get_model(config.model.name), "variables_from_config", None):
    raise TrainingError(f"config.model.name={config.model.name!r} is built from the config; it "
                        "has no parameters to train.")
  training = config.training
  # (score_sde's configs of one resolution leave n_jitted_steps out: one step per call then)
  batch_size, n_jitted = int(training.batch_size), int(training.get("n_jitted_steps", 1))
  num_train_steps = int(training.n_iters)
  if n_jitted < 1:
    raise UserError(f"config.training.n_jitted_steps must be >= 1, got {n_jitted}.")
  mesh = devices.batch_mesh()
  devices.check_batch_size(batch_size, mesh, "config.training.batch_size")
  init, train_step, eval_step = train_functions(config, mesh)
  replicated = devices.replicated(mesh)
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
    state = resume_state(meta_manager, latest, state, replicated)
    writer = summary_writer(workdir, initial_step)
    eval_iter = None
    sampler = None
    if training.snapshot_sampling:
      key = _compiled_key(config, mesh, "sampling")
      if key not in _SNAPSHOT_SAMPLERS:  # cached like the steps: its programs compile once
        shape = (batch_size, config.data.image_size, config.data.image_size,
                 config.data.num_channels)
        _SNAPSHOT_SAMPLERS[key] = factory.build(config, shape,
                                                batch_sharding=devices.batch_sharding(mesh))
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
    close_run_files(writer, meta_manager, snapshot_manager)
  seconds = time.perf_counter() - start_time
  summary = dict(initial_step=initial_step, step=step, training_loss=last_loss,
                 checkpoints=os.path.abspath(os.path.join(workdir, "checkpoints")),
                 snapshots_saved=saved, device_count=int(mesh.devices.size),
                 seconds=seconds, steps_per_second=(step - initial_step) / max(seconds, 1e-9))
  logging.info("Trained to step %d in %.1f s.", step, seconds)
  print(json.dumps(summary))
  return summary
