"""`--mode train` of a classifier config (`train_classifier.py`), its export
(`tools/export_classifier.py`) and the labelled data (`datasets.labelled_images`), on the CPU.

One tiny noise-conditional WideResNet (8 px digits, widths 16, 32, 64) compiles its step once for
the 4 forced host devices: an uninterrupted run and a run killed and resumed share it.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import checkpoints
import datasets
import run_lib
import sde_lib
import train_classifier
from configs.demo import digits_classifier
from errors import UserError
from models import classifiers
from sampling import devices
from tools import export_classifier

N_ITERS = 6
KILL_AT = 4  # the killed run stops when it logs step 4; its last pre-emption checkpoint is 3
# (checkpoints-meta is written every 2 steps and at each snapshot, every 3)


def _config():
  config = digits_classifier.get_config()
  config.data.image_size = 8
  classifier = config.classifier
  classifier.blocks_per_group = 1
  classifier.channel_multiplier = 1
  classifier.embedding_size = 8
  training = config.training
  training.batch_size = 8
  training.n_iters = N_ITERS
  training.snapshot_freq = 3
  training.snapshot_freq_for_preemption = 2
  training.log_freq = 2
  training.eval_freq = 3
  config.model.ema_rate = 0.5  # an EMA that visibly moves in a few steps
  config.optim.warmup = 0
  return config


class Killed(Exception):
  """Stands for the process being killed mid-run."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = _config()
  whole = str(tmp_path_factory.mktemp("whole"))
  killed = str(tmp_path_factory.mktemp("killed"))
  summary = run_lib.train(config, whole)  # dispatched to train_classifier: a classifier config

  log_scalars = train_classifier.log_scalars

  def dies_at_kill_step(writer, step, **scalars):
    if step >= KILL_AT:
      raise Killed(step)
    log_scalars(writer, step, **scalars)

  train_classifier.log_scalars = dies_at_kill_step
  try:
    with pytest.raises(Killed):
      train_classifier.train(config, killed)
  finally:
    train_classifier.log_scalars = log_scalars
  meta_at_kill = sorted(os.listdir(os.path.join(killed, "checkpoints-meta")))
  resumed = train_classifier.train(config, killed)
  return dict(config=config, whole=whole, killed=killed, summary=summary, resumed=resumed,
              meta_at_kill=meta_at_kill)


def _final_state(workdir, config):
  """(EMA variables, train part) of the newest pre-emption checkpoint of `workdir`."""
  init = train_classifier.classifier_functions(config, devices.batch_mesh()).init
  fresh = checkpoints.host_copy(init(jax.random.PRNGKey(config.seed)))
  manager = checkpoints.train_checkpoint_manager(os.path.join(workdir, "checkpoints-meta"), 1)
  try:
    variables, train, meta = checkpoints.restore_training(
        manager, manager.latest_step(), fresh.sampling_variables(),
        dict(step=fresh.step, params=fresh.params, opt_state=fresh.opt_state, rng=fresh.rng))
  finally:
    manager.close()
  assert meta["step"] == N_ITERS and meta["classifier"] == config.classifier.name
  return variables, train


def _assert_trees_close(a, b, atol=1e-6):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol), a, b)


def test_run_writes_checkpoints_and_a_finite_accuracy_table(runs):
  whole, summary = runs["whole"], runs["summary"]
  assert summary["initial_step"] == 0 and summary["step"] == N_ITERS
  assert summary["device_count"] == 4 and summary["snapshots_saved"] == [1, 2]
  assert np.isfinite(summary["training_loss"]) and 0 <= summary["training_accuracy"] <= 1
  assert sorted(os.listdir(os.path.join(whole, "checkpoints"))) == ["checkpoint_1",
                                                                    "checkpoint_2"]
  assert os.listdir(os.path.join(whole, "checkpoints-meta")) == [f"checkpoint_{N_ITERS}"]
  with open(os.path.join(whole, train_classifier.ACCURACY_FILE)) as f:
    report = json.load(f)
  table = report["accuracy"]
  assert report["step"] == N_ITERS and report["num_images"] == 300
  assert len(table) == train_classifier.NUM_ACCURACY_SIGMAS
  sigmas = np.array([row["sigma"] for row in table])
  np.testing.assert_allclose(sigmas[[0, -1]], [0.01, 10.0], rtol=1e-6)
  np.testing.assert_allclose(sigmas[1:] / sigmas[:-1], (1000.0) ** (1 / 7), rtol=1e-6)
  for row in table:
    assert row["num_images"] == 300 and 0 <= row["accuracy"] <= 1
    assert np.isfinite(row["t"]) and 0 <= row["t"] <= 1
  # The VE times of the grid: sigma(t) = sigma_min (sigma_max / sigma_min)^t.
  np.testing.assert_allclose([row["t"] for row in table], np.linspace(0, 1, 8), atol=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_run(runs):
  config = runs["config"]
  assert runs["meta_at_kill"] == ["checkpoint_3"]
  assert runs["resumed"]["initial_step"] == 3 and runs["resumed"]["step"] == N_ITERS
  ema_whole, train_whole = _final_state(runs["whole"], config)
  ema_resumed, train_resumed = _final_state(runs["killed"], config)
  _assert_trees_close(ema_resumed, ema_whole)
  _assert_trees_close(train_resumed["params"], train_whole["params"])
  _assert_trees_close(train_resumed["opt_state"], train_whole["opt_state"])
  # ... and training moved the weights.
  fresh = classifiers.init_params(config, jax.random.PRNGKey(0))
  assert not np.allclose(train_whole["params"]["init_conv"]["kernel"],
                         fresh["init_conv"]["kernel"])


def test_export_writes_the_ema_params_that_load_params_reads(runs, tmp_path):
  config = runs["config"]
  output = str(tmp_path / "classifier" / "params.msgpack")
  info = export_classifier.export(config, runs["whole"], output)
  assert info["step"] == N_ITERS and info["checkpoint"].endswith("checkpoint_2")
  assert os.path.getsize(output) == info["bytes"]
  loaded = classifiers.load_params(config, output)
  ema, _ = _final_state(runs["whole"], config)
  _assert_trees_close(loaded, ema["params"], atol=0)
  first = export_classifier.export(config, runs["whole"], output, step=1)
  assert first["step"] == 3
  other = _config()
  other.classifier.channel_multiplier = 2
  with pytest.raises(UserError, match="does not hold"):
    export_classifier.export(other, runs["whole"], str(tmp_path / "other.msgpack"))
  assert not os.path.exists(tmp_path / "other.msgpack")


def test_labelled_digits_are_the_digits_splits_with_scikit_learns_targets():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  targets = load_digits().target
  config = _config()
  for evaluation, count in ((False, 1497), (True, 300)):
    images, labels = datasets.labelled_images(config, evaluation=evaluation)
    assert images.shape == (count, 8, 8, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    held_out = datasets.digits_held_out(targets.size)
    np.testing.assert_array_equal(labels, targets[held_out if evaluation else ~held_out])
    np.testing.assert_allclose(images, datasets.digits_images(8, 1, evaluation) / 255.0,
                               atol=1e-7)
  config.data.centered = True
  centered, _ = datasets.labelled_images(config, evaluation=True)
  assert centered.min() == -1.0 and centered.max() == 1.0


def test_labelled_npz_and_unlabelled_sources(tmp_path):
  config = _config()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  path = str(tmp_path / "labelled.npz")
  np.savez(path, images=images, labels=np.array([0, 1, 2, 1, 0], np.int64))
  config.data.path = path
  x, y = datasets.labelled_images(config)
  np.testing.assert_allclose(x, images / 255.0, atol=1e-7)
  np.testing.assert_array_equal(y, [0, 1, 2, 1, 0])
  assert y.dtype == np.int32
  unlabelled = str(tmp_path / "unlabelled.npz")
  np.savez(unlabelled, images=images)
  config.data.path = unlabelled
  with pytest.raises(datasets.DatasetError, match="unlabelled.npz.*no `labels`"):
    datasets.labelled_images(config)
  config.data.path = ""
  config.data.dataset = "FFHQ"
  with pytest.raises(datasets.DatasetError, match="'FFHQ'.*DIGITS"):
    datasets.labelled_images(config)


def test_classifier_config_of_an_unlabelled_data_set_fails_before_compiling(tmp_path,
                                                                            monkeypatch):
  config = _config()
  config.data.dataset = "FFHQ"

  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled before checking the data")

  monkeypatch.setattr(train_classifier, "classifier_functions", no_compiling)
  with pytest.raises(datasets.DatasetError, match="labels are available for DIGITS"):
    run_lib.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("sde", [sde_lib.VESDE(0.01, 10.0, 100), sde_lib.VPSDE(0.1, 20.0, 100),
                                 sde_lib.subVPSDE(0.1, 20.0, 100)])
def test_accuracy_noise_levels_are_reached_at_their_times(sde):
  stds = train_classifier.sigma_grid(sde, 8)
  times = train_classifier.times_for_stds(sde, stds)
  reached = np.asarray(sde.marginal_prob(jnp.zeros((8, 1)), jnp.asarray(times, jnp.float32))[1])
  np.testing.assert_allclose(reached, stds, rtol=2e-4)
  assert np.all(np.diff(times) > 0) and 0 <= times[0] and times[-1] <= sde.T + 1e-6


def test_labelled_tfds_data_sets_give_their_labels_and_unlabelled_ones_say_so():
  """tfds data sets with a `label` feature (mocked: nothing is downloaded) give both splits whole,
  preprocessed to the config's size, with their labels; CelebA (attributes only) is an error."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.dataset, config.data.num_channels, config.data.image_size = "CIFAR10", 3, 8
  with tfds.testing.mock_data(num_examples=12):
    for evaluation in (False, True):
      images, labels = datasets.labelled_images(config, evaluation=evaluation)
      assert images.shape == (12, 8, 8, 3) and images.dtype == np.float32
      assert 0.0 <= images.min() and images.max() <= 1.0
      assert labels.shape == (12,) and labels.dtype == np.int32
      assert 0 <= labels.min() and labels.max() <= 9 and len(set(labels.tolist())) > 1
      # Stored order: the whole split, once.
      again, _ = datasets.labelled_images(config, evaluation=evaluation)
      np.testing.assert_array_equal(images, again)
    config.data.dataset = "CELEBA"
    with pytest.raises(datasets.DatasetError, match="celeb_a.*no class labels"):
      datasets.labelled_images(config)


def test_random_flip_mirrors_about_half_the_images():
  x0 = jax.random.normal(jax.random.PRNGKey(0), (400, 4, 4, 1))
  out = np.asarray(train_classifier.mirror_at_random(x0, jax.random.PRNGKey(1)))
  same = np.all(out == np.asarray(x0), axis=(1, 2, 3))
  mirrored = np.all(out == np.asarray(x0)[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)
  assert 150 < mirrored.sum() < 250
