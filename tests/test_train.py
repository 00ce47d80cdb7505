"""`--mode train` on the CPU: a tiny DDPM++ learns scikit-learn's digits (no download).

One shrunken config (8 px, one resolution, no attention) compiles its step once for the 4 forced
host devices (train.py caches it): an uninterrupted run, a run that is killed and resumed, the
loss comparison and the data-parallel check all share it; the data-parallel check compiles it once
more for one device. Then the command line trains and samples a checkpoint in subprocesses.
"""
import glob
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import checkpoints
import datasets
import train as train_lib
from configs.tiny import digits_ddpmpp
from sampling import devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITERS = 12
KILL_AT = 10  # the killed run stops here; its last pre-emption checkpoint is at step 8


def _config():
  config = digits_ddpmpp.get_config()
  config.data.image_size = 8
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  training = config.training
  training.batch_size = 8
  training.n_jitted_steps = 2
  training.n_iters = N_ITERS
  training.snapshot_freq = 6
  training.snapshot_freq_for_preemption = 4
  training.log_freq = 2
  training.eval_freq = 6
  training.snapshot_sampling = True
  config.sampling.num_steps = 2
  config.model.ema_rate = 0.5  # an EMA that visibly moves in a few steps
  config.optim.lr = 3e-3
  config.optim.warmup = 2
  return config


class Killed(Exception):
  """Stands for the process being killed mid-run."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run, and one killed at step KILL_AT then resumed, of the same config."""
  config = _config()
  whole = str(tmp_path_factory.mktemp("whole"))
  killed = str(tmp_path_factory.mktemp("killed"))
  summary = train_lib.train(config, whole)

  log_scalars = train_lib.log_scalars

  def dies_at_kill_step(writer, step, **scalars):
    if step >= KILL_AT:
      raise Killed(step)
    log_scalars(writer, step, **scalars)

  train_lib.log_scalars = dies_at_kill_step
  try:
    with pytest.raises(Killed):
      train_lib.train(config, killed)
  finally:
    train_lib.log_scalars = log_scalars
  meta_steps = sorted(int(p.rsplit("_", 1)[1])
                      for p in glob.glob(os.path.join(killed, "checkpoints-meta", "checkpoint_*")))
  at_kill = checkpoints.load_checkpoint(os.path.join(killed, "checkpoints-meta"), config)
  resumed = train_lib.train(config, killed)
  return dict(config=config, whole=whole, killed=killed, summary=summary, resumed=resumed,
              meta_steps_at_kill=meta_steps, at_kill=at_kill)


def _train_part(workdir, config):
  """(variables, train part) of the newest pre-emption checkpoint of `workdir`."""
  init = train_lib.train_functions(config, devices.batch_mesh())[0]
  fresh = checkpoints.host_copy(init(jax.random.PRNGKey(config.seed)))
  manager = checkpoints.train_checkpoint_manager(os.path.join(workdir, "checkpoints-meta"), 1)
  try:
    variables, train, meta = checkpoints.restore_training(
        manager, manager.latest_step(), fresh.sampling_variables(),
        dict(step=fresh.step, params=fresh.params, opt_state=fresh.opt_state, rng=fresh.rng))
  finally:
    manager.close()
  return variables, train, meta, fresh


def _events(workdir):
  """{tag: {step: value}} of the TensorBoard event files under workdir/tensorboard."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):  # TFRecord framing: length, crc, payload, crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def _tree_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_run_writes_snapshots_preemption_checkpoint_events_and_samples(runs):
  whole, config = runs["whole"], runs["config"]
  summary = runs["summary"]
  assert summary["initial_step"] == 0 and summary["step"] == N_ITERS
  assert summary["device_count"] == 4 and summary["snapshots_saved"] == [1, 2]
  assert sorted(os.listdir(os.path.join(whole, "checkpoints"))) == ["checkpoint_1",
                                                                    "checkpoint_2"]
  assert os.listdir(os.path.join(whole, "checkpoints-meta")) == [f"checkpoint_{N_ITERS}"]
  events = _events(whole)
  assert sorted(events["training_loss"]) == list(range(2, N_ITERS + 1, 2))
  assert sorted(events["eval_loss"]) == [6, 12]
  assert all(np.isfinite(list(events["training_loss"].values())))
  for step in (6, 12):
    samples = np.load(os.path.join(whole, "samples", f"iter_{step}", "sample.npz"))["samples"]
    assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
    assert os.path.isfile(os.path.join(whole, "samples", f"iter_{step}", "sample.png"))


def test_sampling_loads_the_ema_weights_of_the_newest_snapshot(runs):
  whole, config = runs["whole"], runs["config"]
  path = checkpoints.find_checkpoint(whole)
  assert path == os.path.join(whole, "checkpoints", "checkpoint_2")
  variables, step = checkpoints.load_checkpoint(whole, config)
  assert step == N_ITERS and sorted(variables) == ["params"]
  ema, train, _, _ = _train_part(whole, config)
  _tree_equal(variables, ema)
  first, step = checkpoints.load_checkpoint(whole, config, step=1)
  assert step == 6
  with pytest.raises(checkpoints.CheckpointError, match="does not fit"):
    other = config.copy_and_resolve_references()
    other.model.nf = 16
    checkpoints.load_checkpoint(whole, other)
  # The EMA is not the raw weights, and it moved away from the first snapshot's.
  assert not np.allclose(variables["params"]["Conv_0"]["kernel"],
                         train["params"]["Conv_0"]["kernel"])
  assert not np.allclose(variables["params"]["Conv_0"]["kernel"],
                         first["params"]["Conv_0"]["kernel"])


def test_trained_checkpoint_converts_to_a_small_released_format_file(runs, tmp_path):
  """What tools.convert_checkpoint does with a --mode train folder: the EMA alone, in score_sde's
  msgpack."""
  whole, config = runs["whole"], runs["config"]
  folder = checkpoints.find_checkpoint(whole)
  state = checkpoints.released_state_from_trained(folder, config)
  written = checkpoints.write_released_checkpoint(state, str(tmp_path), config)
  assert written == os.path.join(str(tmp_path), "checkpoints", f"checkpoint_{N_ITERS}")
  state = checkpoints.read_state(written)
  assert sorted(state) == ["ema_rate", "model_state", "params_ema", "step"]
  assert state["ema_rate"] == pytest.approx(config.model.ema_rate)
  converted, step = checkpoints.load_checkpoint(str(tmp_path), config)
  assert step == N_ITERS
  _tree_equal(converted, checkpoints.load_checkpoint(whole, config)[0])
  with pytest.raises(ValueError, match="already exists"):
    checkpoints.write_released_checkpoint(state, str(tmp_path), config)


def test_killed_run_resumes_at_its_checkpoint_with_the_same_ema(runs):
  config = runs["config"]
  assert runs["meta_steps_at_kill"] == [8]
  assert runs["resumed"]["initial_step"] == 8 and runs["resumed"]["step"] == N_ITERS
  # The EMA the killed run saved at step 8 is the uninterrupted run's at step 8: the data stream
  # and the PRNG key are functions of the step.
  variables_at_kill, step = runs["at_kill"]
  assert step == 8
  # ... and resuming from it ends exactly where the uninterrupted run ended.
  ema_whole, train_whole, meta_whole, _ = _train_part(runs["whole"], config)
  ema_resumed, train_resumed, meta_resumed, _ = _train_part(runs["killed"], config)
  assert meta_whole["step"] == meta_resumed["step"] == N_ITERS
  _tree_equal(ema_resumed, ema_whole)
  _tree_equal(train_resumed, train_whole)
  assert not np.allclose(variables_at_kill["params"]["Conv_0"]["kernel"],
                         ema_whole["params"]["Conv_0"]["kernel"])
  # The resumed run logged the steps after 8 (TensorBoard drops the killed run's, purge_step).
  events = _events(runs["killed"])
  assert sorted(events["training_loss"]) == list(range(2, N_ITERS + 1, 2))


def test_training_lowers_the_loss(runs):
  """The loss of the trained raw weights is below that of the initial ones on fixed eval data."""
  config = runs["config"]
  mesh = devices.batch_mesh()
  _, _, eval_step = train_lib.train_functions(config, mesh)
  _, train, _, fresh = _train_part(runs["whole"], config)
  images = datasets.digits_images(8, 1, evaluation=True)[:8].astype(np.float32) / 255.0
  images = jax.device_put(images, devices.batch_sharding(mesh))
  replicated = devices.replicated(mesh)
  initial = jax.device_put(fresh, replicated)
  trained = jax.device_put(fresh.replace(params_ema=train["params"]), replicated)

  def mean_loss(state):
    return np.mean([float(eval_step(state, images, jax.random.PRNGKey(k))) for k in range(16)])

  before, after = mean_loss(initial), mean_loss(trained)
  assert after < 0.8 * before, (before, after)


def test_data_parallel_step_equals_the_single_device_step(runs):
  config = runs["config"]
  mesh4, mesh1 = devices.batch_mesh(), devices.batch_mesh(jax.devices()[:1])
  assert mesh4.devices.size == 4
  init, train4, _ = train_lib.train_functions(config, mesh4)
  _, train1, _ = train_lib.train_functions(config, mesh1)
  state = checkpoints.host_copy(init(jax.random.PRNGKey(config.seed)))
  batch = next(datasets.get_split(config, additional_dim=2).as_numpy_iterator())["image"]
  results = []
  for mesh, step in ((mesh4, train4), (mesh1, train1)):
    placed = jax.device_put(state, devices.replicated(mesh))
    # Placed as train.train places its batches (so the 4-device program is the cached one).
    images = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec(None, "batch")), batch)
    new_state, step_losses = step(placed, images)
    results.append(checkpoints.host_copy((new_state, step_losses)))
  (state4, losses4), (state1, losses1) = results
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(state4.params), jax.tree_util.tree_leaves(state1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(state4.rng, state1.rng)


def test_command_line_trains_then_samples_the_checkpoint(tmp_path):
  workdir = str(tmp_path / "digits")
  # Each command runs two steps: XLA's backend optimisations would cost more than they save.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_backend_optimization_level=0")
  common = ["--config", "configs/tiny/digits_ddpmpp.py", "--workdir", workdir,
            "--config.data.image_size=8", "--config.model.ch_mult=(1,)",
            "--config.model.attn_resolutions=()"]
  train = subprocess.run(
      [sys.executable, "main.py", *common, "--mode", "train", "--config.training.n_iters=2",
       "--config.training.n_jitted_steps=1", "--config.training.batch_size=4",
       "--config.training.snapshot_sampling=false"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  summary = json.loads(train.stdout.strip().splitlines()[-1])
  assert summary["step"] == 2 and summary["snapshots_saved"] == [1]
  sample = subprocess.run(
      [sys.executable, "main.py", *common, "--mode", "sample", "--config.eval.batch_size=4",
       "--config.eval.num_samples=4", "--config.sampling.num_steps=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert sample.returncode == 0, sample.stderr[-3000:]
  on_disk = json.load(open(os.path.join(workdir, "eval", "sampling.json")))
  assert on_disk["source"].endswith(os.path.join("checkpoints", "checkpoint_1"))
  samples = np.load(os.path.join(workdir, "eval", "samples_0.npz"))["samples"]
  assert samples.shape == (4, 8, 8, 1)


def test_missing_data_and_analytic_models_are_clear_errors(tmp_path):
  config = _config()
  config.data.dataset = "CIFAR10"
  config.data.num_channels = 3
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(datasets.DatasetError, match="not prepared in"):
    train_lib.train(config, str(tmp_path / "run"))
  from configs.analytic import ffhq32  # pylint: disable=g-import-not-at-top
  with pytest.raises(train_lib.TrainingError, match="no parameters to train"):
    train_lib.train(ffhq32.get_config(), str(tmp_path / "analytic"))
