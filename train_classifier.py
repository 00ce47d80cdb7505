"""`--mode train` for a classifier config (one with a `classifier` section): trains the
noise-conditional classifier of `models/classifiers.py` that class-conditional sampling
(`sampling/guidance.py`) uses as p_t(y | x).

The objective is the cross-entropy of `classifiers.logit_fn` on noisy data: for each example
t ~ U(sde.sampling_eps, sde.T), (mean, std) = sde.marginal_prob(x_0, t) and x_t = mean + std z
(VE: x_0 + sigma(t) z; VP / sub-VP: their marginals), with the classifier fed noise_std = std, the
value guidance feeds it at sampling time. x_0 are the data in the score model's space
(`datasets.labelled_images`: DIGITS, an .npz with `labels`, or a labelled tfds data set), held
in memory; with data.random_flip, each training image is mirrored with probability 1/2.

The loop mirrors `train.py` (whose helpers it reuses): the optimiser of `config.optim`, an EMA of
the params at model.ema_rate, snapshots in <workdir>/checkpoints/checkpoint_<n>/ (n = step /
snapshot_freq; `variables` holds the EMA params), pre-emption checkpoints in
<workdir>/checkpoints-meta/, TensorBoard scalars in <workdir>/tensorboard/. One optimiser step
per compiled call (training.n_jitted_steps is not used), data-parallel over every device.

A resumed run is exact: epoch e visits the training images in the order of a permutation seeded
by (config.seed, e), so the batch of step s depends on s only, and the noise key is part of the
checkpointed state.

At the end, <workdir>/classifier_accuracy.json holds the accuracy of the EMA params on the eval
split at NUM_ACCURACY_SIGMAS noise stds spaced geometrically from the smallest to the largest
(VE: model.sigma_min .. sigma_max; VP / sub-VP: the std at sde.sampling_eps .. sde.T).
"""
import functools
import json
import os
import time
from typing import Callable, Dict, NamedTuple, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from tqdm import tqdm

import checkpoints
import datasets
import losses
import sde_lib
import validation
from atomic_io import atomic_write_text
from models import classifiers
from sampling import devices
from sampling.denoiser import DenoiserView
from train import (TrainingError, _compiled_key, _compiled_once_unoptimised, _crossed,
                   _quiet_orbax, close_run_files, log_scalars, resume_state,
                   summary_writer)

ACCURACY_FILE = "classifier_accuracy.json"
NUM_ACCURACY_SIGMAS = 8   # noise levels of the final accuracy table
NUM_EVAL_SIGMAS = 3       # noise levels logged every training.eval_freq steps
_FUNCTIONS = {}


class ClassifierFunctions(NamedTuple):
  """Jitted programs of one classifier config on one mesh (see `classifier_functions`)."""
  init: Callable        # rng -> TrainState (replicated)
  train_step: Callable  # (state, x0 (B, ...), labels (B,)) -> (state, loss, accuracy)
  count_correct: Callable  # (params, x0, labels, weights, t, key) -> weighted number correct


def _noisy(sde, x0, t, z):
  """(x_t, std): x_t = mean + std z drawn from the SDE's marginal at times t (B,)."""
  mean, std = sde.marginal_prob(x0, t)
  std = jnp.broadcast_to(std, (x0.shape[0],))
  return mean + sde_lib.per_sample(std, x0) * z, std


def mirror_at_random(x0, key):
  """x0 (B, H, W, C) with each image mirrored left-right with probability 1/2."""
  mirrored = jax.random.bernoulli(key, 0.5, (x0.shape[0],))
  return jnp.where(mirrored[:, None, None, None], x0[:, :, ::-1], x0)


def classifier_functions(config, mesh) -> ClassifierFunctions:
  """The jitted init, training step and evaluation of the config's classifier on `mesh`, cached
  (a resumed run in the same process compiles nothing). Batches are global arrays sharded over
  the mesh's `batch` axis; x0 is in the score model's data space."""
  key = _compiled_key(config, mesh, "classifier")
  if key in _FUNCTIONS:
    return _FUNCTIONS[key]
  classifier = classifiers.create_classifier(config)
  optimizer = losses.get_optimizer(config)
  sde = sde_lib.get_sde(config)
  eps, end = float(sde.sampling_eps), float(sde.T)
  ema_rate = float(config.model.ema_rate)
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  random_flip = bool(config.data.random_flip)

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1, size, size, channels), jnp.float32)
    params = classifier.init({"params": params_rng}, x, jnp.ones((1,), jnp.float32),
                             train=False)["params"]
    params = flax.core.unfreeze(params)
    return losses.TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                             opt_state=optimizer.init(params), params_ema=params,
                             model_state={}, rng=state_rng)

  def cross_entropy(params, x_t, std, labels):
    logits = classifiers.logit_fn(config, classifier, params)(x_t, std)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, accuracy

  def train_step(state, x0, labels):
    rng, step_rng = jax.random.split(state.rng)
    t_rng, z_rng = jax.random.split(step_rng)
    if random_flip:  # augmentation as score training's data.random_flip
      x0 = mirror_at_random(x0, jax.random.fold_in(step_rng, 2))
    t = jax.random.uniform(t_rng, (x0.shape[0],), minval=eps, maxval=end)
    x_t, std = _noisy(sde, x0, t, jax.random.normal(z_rng, x0.shape))
    (loss, accuracy), grads = jax.value_and_grad(cross_entropy, has_aux=True)(
        state.params, x_t, std, labels)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          params_ema=losses.ema_update(state.params_ema, params, ema_rate),
                          rng=rng)
    return state, loss, accuracy

  def count_correct(params, x0, labels, weights, t, key):
    x_t, std = _noisy(sde, x0, jnp.full((x0.shape[0],), t, jnp.float32),
                      jax.random.normal(key, x0.shape))
    logits = classifiers.logit_fn(config, classifier, params)(x_t, std)
    return jnp.sum(weights * (jnp.argmax(logits, axis=-1) == labels))

  replicated, batch = devices.replicated(mesh), devices.batch_sharding(mesh)
  functions = ClassifierFunctions(
      init=_compiled_once_unoptimised(jax.jit(init, out_shardings=replicated)),
      train_step=jax.jit(train_step, in_shardings=(replicated, batch, batch),
                         out_shardings=(replicated, replicated, replicated), donate_argnums=0),
      count_correct=jax.jit(count_correct,
                            in_shardings=(replicated, batch, batch, batch, replicated, replicated),
                            out_shardings=replicated))
  _FUNCTIONS[key] = functions
  return functions


# ----------------------------------------------------------------------------- data

def _global_array(values: np.ndarray, sharding: NamedSharding):
  """A global array from a host array every process holds whole (the data sets are small)."""
  return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


class _Batches:
  """The training batch of each step: epoch e visits the N images in the order
  default_rng((seed, e)).permutation(N); step s takes positions s B .. (s + 1) B - 1 of that
  endless stream, so the batch depends on the step only, wherever a run resumed."""

  def __init__(self, num_images: int, batch_size: int, seed: int):
    self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
    self._orders: Dict[int, np.ndarray] = {}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      if len(self._orders) > 2:
        self._orders.pop(min(self._orders))
      rng = np.random.default_rng([self.seed, epoch])
      self._orders[epoch] = rng.permutation(self.num_images)
    return self._orders[epoch]

  def indices(self, step: int) -> np.ndarray:
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
    return np.concatenate([self._order(int(e))[positions[positions // self.num_images == e]
                                                % self.num_images]
                           for e in np.unique(positions // self.num_images)])


# ----------------------------------------------------------------------------- evaluation

def _sde_std(sde, t) -> np.ndarray:
  t = np.asarray(t, np.float32).reshape(-1)
  return np.asarray(sde.marginal_prob(jnp.zeros((t.size, 1)), jnp.asarray(t))[1], np.float64)


def accuracy_sigma_range(sde) -> Tuple[float, float]:
  """(smallest, largest) noise std of the accuracy tables: VE's sigma_min and sigma_max, else the
  marginal std at sde.sampling_eps and at sde.T."""
  if isinstance(sde, sde_lib.VESDE):
    return float(sde.sigma_min), float(sde.sigma_max)
  low, high = _sde_std(sde, [sde.sampling_eps, sde.T])
  return float(low), float(high)


def times_for_stds(sde, stds) -> np.ndarray:
  """The times t at which the marginal std equals `stds`: the denoiser view's closed-form t(σ)
  at σ = std / s(t), the mean scale s(t) being 1 (VE), sqrt(1 - std²) (VP) or sqrt(1 - std)
  (subVP, whose std is 1 - s²)."""
  stds = jnp.asarray(stds, jnp.float32)
  view = DenoiserView(sde, continuous=True, eps=float(sde.sampling_eps))
  return np.asarray(view.t_of_sigma(stds / sde_lib.mean_scale_from_std(sde, stds)), np.float64)


def sigma_grid(sde, count: int) -> np.ndarray:
  """`count` noise stds, geometrically spaced over `accuracy_sigma_range(sde)`."""
  low, high = accuracy_sigma_range(sde)
  return np.geomspace(low, high, count)


def eval_batch_size(count: int, batch_size: int, largest: int = 256) -> int:
  """A multiple of `batch_size` (the training batch, divisible by the devices) for evaluating
  `count` images in ceil(count / largest) batches with little padding."""
  per_batch = -(-count // max(1, -(-count // largest)))
  return -(-per_batch // batch_size) * batch_size


def eval_accuracy(functions, mesh, params, images, labels, sde, sigmas, batch_size, key):
  """[{sigma, t, accuracy, num_images}] of `params` on (images, labels) at each noise std, in
  batches of `batch_size`; the noise of level k, batch j is drawn from
  fold_in(fold_in(key, k), j). A last partial batch is padded with weight-0 rows."""
  batch = devices.batch_sharding(mesh)
  replicated = devices.replicated(mesh)
  count = images.shape[0]
  padded = -(-count // batch_size) * batch_size
  rows = np.arange(padded) % count
  weights = (np.arange(padded) < count).astype(np.float32)
  times = times_for_stds(sde, sigmas)
  results = []
  for level, (sigma, t) in enumerate(zip(sigmas, times)):
    level_key = jax.random.fold_in(key, level)
    correct = 0.0
    for j, start in enumerate(range(0, padded, batch_size)):
      part = rows[start:start + batch_size]
      correct += float(functions.count_correct(
          params, _global_array(images[part], batch), _global_array(labels[part], batch),
          _global_array(weights[start:start + batch_size], batch),
          jax.device_put(np.float32(t), replicated),
          jax.device_put(jax.random.fold_in(level_key, j), replicated)))
    results.append(dict(sigma=float(sigma), t=float(t), accuracy=correct / count,
                        num_images=int(count)))
  return results


# ----------------------------------------------------------------------------- checkpoints

def _meta(config, step):
  return dict(step=int(step), classifier=str(config.classifier.name),
              num_classes=int(config.classifier.num_classes),
              image_size=int(config.data.image_size),
              num_channels=int(config.data.num_channels), sde=str(config.training.sde),
              dataset=str(config.data.dataset))


def _save(manager, n, state, config):
  """checkpoint_<n>: `variables` = {'params': EMA params}; `train` = raw params, Adam, key."""
  checkpoints.save_training(manager, n, state.sampling_variables(),
                            dict(step=state.step, params=state.params, opt_state=state.opt_state,
                                 rng=state.rng), _meta(config, state.step))


def _check_config(config, labels):
  """The classifier section, before anything compiles."""
  classifiers.create_classifier(config)               # an unknown name fails here
  classifiers.input_normalisation(config)              # image_mean / image_std per channel
  num_classes = int(config.classifier.num_classes)
  if labels.size and int(labels.max()) >= num_classes:
    raise TrainingError(f"The data set has labels up to {int(labels.max())}, but "
                        f"config.classifier.num_classes={num_classes}.")


# ----------------------------------------------------------------------------- the loop

def train(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Train the config's classifier (resumes from <workdir>/checkpoints-meta/).

  Runs training.n_iters steps of batch training.batch_size, data-parallel over every device.
  Logs the training loss and accuracy every log_freq steps, the EMA's eval-split accuracy at
  NUM_EVAL_SIGMAS noise levels every eval_freq steps; writes the checkpoints (see the module
  docstring) and <workdir>/classifier_accuracy.json. Prints and returns a JSON summary.
  """
  validation.check_train_mode(config)
  if "classifier" not in config:
    raise TrainingError("train_classifier.train needs a config with a `classifier` section.")
  _quiet_orbax()
  devices.set_matmul_precision(config)
  distributed = config.sampling.distributed
  devices.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                 distributed.process_id)
  training = config.training
  batch_size, num_train_steps = int(training.batch_size), int(training.n_iters)
  # The data first: a data set without labels is reported before anything compiles.
  train_images, train_labels = datasets.labelled_images(config)
  eval_images, eval_labels = datasets.labelled_images(config, evaluation=True)
  _check_config(config, np.concatenate([train_labels, eval_labels]))
  sde = sde_lib.get_sde(config)
  mesh = devices.batch_mesh()
  devices.check_batch_size(batch_size, mesh, "config.training.batch_size")
  functions = classifier_functions(config, mesh)
  batch_sharding, replicated = devices.batch_sharding(mesh), devices.replicated(mesh)
  batches = _Batches(train_images.shape[0], batch_size, int(config.seed))
  eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  eval_sigmas = sigma_grid(sde, NUM_EVAL_SIGMAS)
  evaluate = functools.partial(eval_accuracy, functions, mesh, images=eval_images,
                               labels=eval_labels, sde=sde, key=eval_key,
                               batch_size=eval_batch_size(eval_images.shape[0], batch_size))

  os.makedirs(workdir, exist_ok=True)
  meta_manager = checkpoints.train_checkpoint_manager(
      os.path.join(workdir, "checkpoints-meta"), max_to_keep=1)
  latest = meta_manager.latest_step()  # pre-emption checkpoints are numbered by their step
  initial_step = 0 if latest is None else int(latest)
  snapshot_manager = writer = None
  try:
    snapshot_manager = checkpoints.train_checkpoint_manager(os.path.join(workdir, "checkpoints"))
    state = functions.init(jax.random.PRNGKey(config.seed))
    state = resume_state(meta_manager, latest, state, replicated)
    writer = summary_writer(workdir, initial_step)
    step, start_time, saved = initial_step, time.perf_counter(), []
    last_loss = last_accuracy = None
    window = []  # (loss, accuracy) device scalars since the last log
    logging.info("Training classifier %s on %d devices (%d training, %d eval images) from step "
                 "%d to %d.", config.classifier.name, mesh.devices.size, train_images.shape[0],
                 eval_images.shape[0], initial_step, num_train_steps)
    with tqdm(total=num_train_steps, initial=initial_step, unit="step", desc="train") as bar:
      while step < num_train_steps:
        rows = batches.indices(step)
        state, loss, accuracy = functions.train_step(
            state, _global_array(train_images[rows], batch_sharding),
            _global_array(train_labels[rows], batch_sharding))
        window.append((loss, accuracy))
        previous, step = step, step + 1
        bar.update(1)
        final = step >= num_train_steps
        if _crossed(previous, step, int(training.log_freq)) or final:
          last_loss, last_accuracy = np.mean(np.asarray(jax.device_get(window)), axis=0).tolist()
          window = []
          if not np.isfinite(last_loss):
            raise TrainingError(
                f"The training loss is {last_loss} at step {step}; the last good state is in "
                f"{os.path.join(workdir, 'checkpoints-meta')}. Lower config.optim.lr or set "
                "config.optim.grad_clip.")
          log_scalars(writer, step, training_loss=last_loss, training_accuracy=last_accuracy)
        if _crossed(previous, step, int(training.eval_freq)):
          table = evaluate(state.params_ema, sigmas=eval_sigmas)
          log_scalars(writer, step, **{f"eval_accuracy_sigma_{row['sigma']:.3g}": row["accuracy"]
                                       for row in table})
        if _crossed(previous, step, int(training.snapshot_freq)) or final:
          n = -(-step // int(training.snapshot_freq))  # ceil: the last snapshot may be partial
          if n in snapshot_manager.all_steps():
            logging.info("checkpoint_%d exists already (a resumed run); keeping it.", n)
          else:
            _save(snapshot_manager, n, state, config)
            saved.append(n)
        if final or _crossed(previous, step, int(training.snapshot_freq_for_preemption)) or (
            _crossed(previous, step, int(training.snapshot_freq))):
          _save(meta_manager, step, state, config)
  finally:
    close_run_files(writer, meta_manager, snapshot_manager)
  seconds = time.perf_counter() - start_time

  table = evaluate(state.params_ema, sigmas=sigma_grid(sde, NUM_ACCURACY_SIGMAS))
  accuracy_path = os.path.join(workdir, ACCURACY_FILE)
  if jax.process_index() == 0:
    report = dict(step=int(step), classifier=str(config.classifier.name),
                  sde=str(config.training.sde), dataset=str(config.data.dataset),
                  weights="ema", ema_rate=float(config.model.ema_rate),
                  num_images=int(eval_images.shape[0]), accuracy=table)
    atomic_write_text(accuracy_path, json.dumps(report, indent=2) + "\n")
  for row in table:
    logging.info("sigma %.4g (t %.4f): eval accuracy %.4f (%d images)", row["sigma"], row["t"],
                 row["accuracy"], row["num_images"])
  summary = dict(initial_step=initial_step, step=step, training_loss=last_loss,
                 training_accuracy=last_accuracy,
                 checkpoints=os.path.abspath(os.path.join(workdir, "checkpoints")),
                 snapshots_saved=saved, device_count=int(mesh.devices.size),
                 seconds=seconds, steps_per_second=(step - initial_step) / max(seconds, 1e-9),
                 accuracy_file=os.path.abspath(accuracy_path),
                 eval_accuracy={f"{row['sigma']:.4g}": row["accuracy"] for row in table})
  logging.info("Trained the classifier to step %d in %.1f s.", step, seconds)
  print(json.dumps(summary))
  return summary
