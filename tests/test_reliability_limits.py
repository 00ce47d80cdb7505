"""Reliability at the machine's limits (issue 25): a full disk, another device count, training state
that does not fit, counts too large for the machine, damaged or non-finite files. Each ends in
whole files and one line naming the file or field (docs/reliability.md states the guarantees)."""
import errno
import json
import logging
import os

import jax
import numpy as np
import pytest

import atomic_io
import checkpoints
import images
import main
import run_lib
import sample_rounds
from configs.analytic import get_analytic_config
from errors import UserError
from evaluation import evaluate as evaluation
from models import analytic
from sampling import devices, factory
from tdas import files as tdas_files
from tdas import settings as tdas_settings


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(num_samples=12, batch_size=4):
  config = get_analytic_config(8, 50)
  config.eval.batch_size = batch_size
  config.eval.num_samples = num_samples
  config.sampling.num_steps = 2
  config.sampling.vanilla_comparison = False
  return config


def _round_files(out):
  return sorted(f for f in os.listdir(out) if f.startswith("samples_") and f.endswith(".npz"))


def _leftovers(out):
  return [f for f in os.listdir(out) if f.endswith((".tmp", ".lock"))]


# --- a full disk -------------------------------------------------------------------------------

def _fail_after(monkeypatch, module, name, count):
  """Makes `module.name` (a writer taking a file object first) write a few bytes and raise
  ENOSPC from its `count + 1`-th call on, as a full disk does in the middle of a file."""
  real, calls = getattr(module, name), []

  def writer(f, *args, **kwargs):
    calls.append(1)
    if len(calls) > count:
      f.write(b"PK\x03\x04 partial")
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(f, *args, **kwargs)

  monkeypatch.setattr(module, name, writer)


def test_full_disk_while_sampling_says_how_many_rounds_are_whole_and_a_rerun_ends_it(
    tmp_path, monkeypatch):
  out = tmp_path / "eval"
  _fail_after(monkeypatch, np, "savez_compressed", 1)  # round 0 is written, round 1 fails
  with pytest.raises(sample_rounds.DiskFullError,
                     match=r"the disk at .*eval' is full .*1 of 3 rounds are written"):
    run_lib.sample(_config(), str(tmp_path))
  assert _round_files(out) == ["samples_0.npz"] and not _leftovers(out)
  assert sample_rounds.read_round(str(out / "samples_0.npz"), 4)[2] is None  # whole
  monkeypatch.undo()
  summary = run_lib.sample(_config(), str(tmp_path))
  assert summary["rounds_this_run"] == 2 and len(_round_files(out)) == 3


def test_full_disk_after_the_rounds_names_them_all_and_leaves_no_partial_json(
    tmp_path, monkeypatch):
  real = run_lib.atomic_write_text

  def full(path, text):
    with atomic_io.atomic_write(path, "w") as f:
      f.write(text[:10])
      raise OSError(errno.ENOSPC, "No space left on device", path)
    return real(path, text)

  monkeypatch.setattr(run_lib, "atomic_write_text", full)
  with pytest.raises(sample_rounds.DiskFullError,
                     match=r"while writing sampling.json\): 3 of 3 rounds are written"):
    run_lib.sample(_config(), str(tmp_path))
  out = tmp_path / "eval"
  assert "sampling.json" not in os.listdir(out) and not _leftovers(out)


def test_pictures_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def full(self, f, *args, **kwargs):
    f.write(b"\x89PNG partial")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Image.Image, "save", full)
  with pytest.raises(OSError):
    images.save_png(str(tmp_path / "grid.png"), np.zeros((4, 4, 3), np.uint8))
  assert os.listdir(tmp_path) == []


def test_main_prints_a_full_disk_as_one_line(tmp_path, monkeypatch):
  line = main.environment_error_message(
      OSError(errno.ENOSPC, "No space left on device", "/w/eval/x.npz"), "/w")
  assert line.startswith("the disk is full at '/w/eval/x.npz'") and "rerun" in line
  assert "\n" not in line

  def full_disk(config, workdir, **options):
    raise sample_rounds.disk_full(str(tmp_path), "", 3, OSError(errno.ENOSPC, "No space"))

  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(main.MODES, "sample", full_disk)
  with flagsaver.flagsaver():
    main.FLAGS(["main.py", f"--config={REPO}/configs/analytic/ffhq64.py", f"--workdir={tmp_path}",
                "--mode=sample"])
    with pytest.raises(SystemExit) as exit_info:
      main.main(["main.py"])
  message = str(exit_info.value.code)
  assert message.startswith("Error: the disk at ") and "0 of 3 rounds are written" in message


# --- device counts -----------------------------------------------------------------------------

METHODS = ("pc", "ode", "euler", "heun", "edm", "euler_ancestral", "ddim", "dpmpp_2m",
           "dpmpp_2m_sde", "dpmpp_3m_sde", "annealed_langevin")


def _method_config(method):
  config = get_analytic_config(8, 50)
  config.sampling.method = method
  config.sampling.num_steps = 2
  if method == "ddim":
    config.training.sde = "vpsde"
  if method == "annealed_langevin":  # (the analytic score takes the levels' σ continuously)
    config.model.num_scales = 4
    config.sampling.num_steps = 0
    config.sampling.langevin.n_steps_each = 1
  return config


def _draw(config, device_count):
  mesh = devices.batch_mesh(jax.devices()[:device_count])
  sampler = factory.build(config, (8, 8, 8, 3), batch_sharding=devices.batch_sharding(mesh))
  variables = jax.device_put(analytic.target_variables(config), devices.replicated(mesh))
  x, _ = factory.run(sampler, jax.random.PRNGKey(7), variables, None, what="test")
  return x


@pytest.mark.parametrize("method", METHODS)
def test_one_two_and_four_devices_agree_as_documented(method):
  """docs/reliability.md: the same draw on any device count; byte-identical at an equal
  per-device batch; otherwise equal up to float rounding (at most one uint8 step, rarely)."""
  config = _method_config(method)
  drawn = {k: _draw(config, k) for k in (1, 2, 4)}
  scale = max(1.0, float(np.abs(drawn[1]).max()))
  for k in (2, 4):
    np.testing.assert_allclose(drawn[k], drawn[1], rtol=0, atol=1e-3 * scale)
    steps = np.abs(images.to_uint8(drawn[k], False).astype(int)
                   - images.to_uint8(drawn[1], False).astype(int))
    assert steps.max() <= 1 and np.mean(steps > 0) <= 0.01, (method, k)


def test_rerun_on_another_device_count_keeps_the_rounds_with_a_notice(tmp_path, monkeypatch,
                                                                      caplog):
  config = _config(num_samples=8)
  summary = run_lib.sample(config, str(tmp_path))  # 4 devices: a per-device batch of 1
  assert summary["fingerprint"]["per_device_batch_shape"] == [1, 8, 8, 3]
  out = tmp_path / "eval"
  before = {f: (out / f).read_bytes() for f in _round_files(out)}
  monkeypatch.setattr(devices, "batch_mesh",
                      lambda devices_=None: devices.Mesh(np.asarray(jax.devices()[:2]),
                                                         ("batch",)))
  with caplog.at_level(logging.WARNING):
    again = run_lib.sample(config, str(tmp_path))
  assert again["rounds_this_run"] == 0 and again["device_count"] == 2
  notices = [r.getMessage() for r in caplog.records if "another per-device batch" in r.getMessage()]
  assert len(notices) == 1 and "Keeping 2 round(s)" in notices[0]
  assert "[1, 8, 8, 3] (4 devices) -> [2, 8, 8, 3] (2 devices)" in notices[0]
  assert {f: (out / f).read_bytes() for f in _round_files(out)} == before
  # One round sampled on 2 devices beside one from 4: still one run for --mode eval.
  os.remove(out / "samples_1.npz")
  assert run_lib.sample(config, str(tmp_path))["rounds_this_run"] == 1
  recorded = [sample_rounds.read_fingerprint(str(out / f)) for f in _round_files(out)]
  assert [r["device_count"] for r in recorded] == [4, 2]
  files = [str(out / f) for f in _round_files(out)]
  assert evaluation._common_fingerprint(files)["steps"] == 2  # pylint: disable=protected-access


# --- training state that does not fit ----------------------------------------------------------

def _train_state(width):
  variables = {"params": {"conv": {"kernel": np.ones((3, 3, 1, width), np.float32)}}}
  train = {"step": np.asarray(4), "params": variables["params"], "rng": np.zeros(2, np.uint32)}
  return variables, train


def _saved_snapshot(folder, n=4, width=8):
  manager = checkpoints.train_checkpoint_manager(str(folder))
  variables, train = _train_state(width)
  checkpoints.save_training(manager, n, variables, train, {"step": n})
  manager.wait_until_finished()
  return manager


def test_resuming_another_network_names_the_folder_and_another_workdir(tmp_path):
  manager = _saved_snapshot(tmp_path / "checkpoints-meta")
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint_4' holds another network .*conv/kernel: "
                           r"\(3, 3, 1, 8\) -> \(3, 3, 1, 16\).*another --workdir"):
    checkpoints.restore_training(manager, 4, *_train_state(16))
  variables, _, meta = checkpoints.restore_training(manager, 4, *_train_state(8))
  assert variables["params"]["conv"]["kernel"].shape == (3, 3, 1, 8) and meta["step"] == 4
  manager.close()


def test_damaged_snapshot_is_one_line_and_an_unfinished_one_is_logged(tmp_path, caplog):
  folder = tmp_path / "checkpoints"
  _saved_snapshot(folder).close()
  for root, _, names in os.walk(folder / "checkpoint_4" / "variables"):
    for name in names:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(3)
  manager = checkpoints.train_checkpoint_manager(str(folder))
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"checkpoint_4' cannot be read .*damaged; move that folder out"):
    checkpoints.restore_training(manager, 4, *_train_state(8))
  manager.close()
  # A newer save cut short (no _CHECKPOINT_METADATA): skipped, and the log says which is used.
  (folder / "checkpoint_9" / "variables").mkdir(parents=True)
  with caplog.at_level(logging.WARNING):
    assert checkpoints.find_checkpoint(str(folder)).endswith("checkpoint_4")
  assert any("Skipping checkpoint_9" in r.getMessage() and "using checkpoint_4" in r.getMessage()
             for r in caplog.records)


# --- counts checked in every mode, before the model loads ---------------------------------------

def _model_must_not_load(monkeypatch):
  def load(*args, **kwargs):
    raise AssertionError("the model was loaded before the counts were checked")
  monkeypatch.setattr(checkpoints, "load_variables", load)


def _tiny():
  from configs.tiny import ncsnpp_ve_discrete  # pylint: disable=g-import-not-at-top
  return ncsnpp_ve_discrete.get_config()


@pytest.mark.parametrize("mode, field, value, message", [
    ("train", "training.batch_size", 0, "config.training.batch_size=0 must be a positive"),
    ("train", "training.batch_size", 10 ** 12, "config.training.batch_size=1000000000000 is too "
                                               "large for this machine"),
    ("train", "training.snapshot_freq", 0, "config.training.snapshot_freq=0"),
    ("train", "optim.lr", -1.0, "config.optim.lr=-1.0 must be a finite positive"),
    ("sample", "sampling.num_steps", 10 ** 12, "config.sampling.num_steps=1000000000000 is too "
                                               "large for this machine: the time grid"),
    ("sample", "eval.batch_size", 10 ** 9, "config.eval.batch_size=1000000000 is too large"),
    ("calibrate", "calibrate.num_bins", 0, "config.calibrate.num_bins=0"),
    ("calibrate", "calibrate.quantiles", (0.5, 0.2), "config.calibrate.quantiles=.* increasing"),
    ("calibrate", "calibrate.max_gain", 0.5, "config.calibrate.max_gain=0.5 must be >= 1"),
    ("calibrate", "calibrate.batch_size", 10 ** 10, "config.calibrate.batch_size=10000000000 is "
                                                    "too large"),
    ("inpaint", "inpaint.num_images", 10 ** 12, "config.inpaint.num_images=1000000000000 is too"),
    ("colorize", "sampling.num_steps", -1, "config.sampling.num_steps=-1"),
    ("likelihood", "eval.bpd_rtol", 0.0, "config.eval.bpd_rtol=0.0"),
    ("likelihood", "eval.bpd_batch_size", 10 ** 9, "config.eval.bpd_batch_size=1000000000 is too"),
    ("eval", "eval.inception_batch_size", 10 ** 8, "config.eval.inception_batch_size=100000000"),
    ("stats", "sampling.tdas.space_alpha", 0.5, "config.sampling.tdas.space_alpha=0.5 must be"),
])
def test_every_mode_checks_its_counts_before_any_work(tmp_path, monkeypatch, mode, field, value,
                                                      message):
  _model_must_not_load(monkeypatch)
  config = _tiny()
  section, key = field.rsplit(".", 1)
  parent = config
  for part in section.split("."):
    parent = parent[part]
  parent[key] = value
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    run_lib.MODES[mode](config, str(tmp_path))
  assert not [f for _, _, names in os.walk(tmp_path) for f in names]  # nothing written


# --- non-finite values in the files a run reads -------------------------------------------------

def test_a_space_file_holding_nan_names_the_file_and_the_field(tmp_path):
  config = get_analytic_config(8, 50)
  mean = np.full((8, 8, 3), 0.5, np.float32)
  mean[2, 3, 1] = np.nan
  path = str(tmp_path / "space.npz")
  np.savez(path, mean=mean)
  config.sampling.tdas.enabled = True
  config.sampling.tdas.space_file = path
  config.sampling.tdas.use_space = True
  with pytest.raises(UserError, match=r"config\.sampling\.tdas\.space_file\) '.*space\.npz': "
                                      r"`mean` must be finite and in \[0, 1\].*1 NaN"):
    tdas_settings.resolve(config)


@pytest.mark.parametrize("reader", ["filters", "frequency", "analytic", "cache", "inception"])
def test_every_file_reader_refuses_non_finite_values_naming_the_file(tmp_path, reader):
  path = str(tmp_path / f"{reader}.npz")
  bad = np.ones((8, 8, 3), np.float32)
  bad[0, 0, 0] = np.inf
  if reader == "filters":
    np.savez(path, space=np.ones_like(bad), freq=bad, info=np.asarray(json.dumps({})))
    call, field = lambda: tdas_files.load_filters(path, (8, 8, 3)), "filter_file"
  elif reader == "frequency":
    np.savez(path, dct_amplitude=bad[..., 0])
    call = lambda: tdas_files.read_frequency(path, "config.calibrate.data_stats_file", (8, 8),
                                             "dct")
    field = "data_stats_file"
  elif reader == "analytic":
    np.savez(path, mean=np.ones_like(bad), dct_variance=-np.ones_like(bad))
    call, field = lambda: tdas_files.read_analytic_target(path, (8, 8, 3)), "target_file"
  elif reader == "inception":
    from evaluation import statistics  # pylint: disable=g-import-not-at-top
    np.savez(path, mu=bad[0, :, 0], sigma=np.eye(8))
    call, field = lambda: statistics.load_statistics(path), "config.eval.stats_file"
  else:
    np.savez(path, count=np.asarray(4), pixel_sum=bad, dct_amplitude_sum=bad)
    call, field = lambda: tdas_files.read_statistics_batch(path, (8, 8, 3)), "Calibration cache"
  with pytest.raises(UserError) as error:
    call()
  message = str(error.value)
  assert path in message and field in message and "\n" not in message
