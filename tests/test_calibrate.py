"""`--mode calibrate` and `--mode stats` end to end on small analytic problems (CPU, 4 devices)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import calibration_sets
import images
import run_lib
from configs.analytic import get_analytic_config
from models import analytic
from tdas import files as tdas_files
from tdas import settings as tdas_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _calibration_config(steps=10):
  """16 px analytic target, 100 noise scales, with the high-frequency score error (docs/numerics.md §7)."""
  config = get_analytic_config(image_size=16, sigma_max=25)
  config.model.num_scales = 100
  config.model.score_error = True
  config.calibrate.steps = steps
  config.calibrate.num_samples = 32
  config.calibrate.batch_size = 16
  return config


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("calibrate"))
  return workdir, run_lib.calibrate(_calibration_config(), workdir)


def test_calibrate_writes_filters_json_and_plots(calibrated):
  workdir, summary = calibrated
  out = os.path.join(workdir, "calibration")
  for name in ("filters_10.npz", "calibration_10.json", "calibration_10.png", "samples_10.png"):
    assert os.path.isfile(os.path.join(out, name)), name
  on_disk = json.load(open(os.path.join(out, "calibration_10.json")))
  assert on_disk == json.loads(json.dumps(summary))
  assert summary["steps"] == 10 and summary["full_steps"] == 100
  assert summary["num_samples"] == dict(reference=32, accelerated=32)
  assert summary["method"] == "zones" and summary["transform"] == "dct"
  # The score error and the acceleration leave excess amplitude: the filter suppresses it.
  zones = summary["fits"]["zones"]
  assert zones["lambda2"] < 1 and zones["lambda1"] < 1, zones
  assert summary["filter"] == zones
  assert all(d > 1 for d in summary["profile"]["deviation"][4:])
  space, freq, info = tdas_files.load_filters(summary["filter_file"], (16, 16, 3))
  assert np.all(space == 1) and info["method"] == "zones" and info["transform"] == "dct"
  assert freq.min() == pytest.approx(min(zones["lambda1"], zones["lambda2"]), rel=1e-6)
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_sample_mode_accepts_the_calibrated_filter_file(calibrated, tmp_path):
  _, summary = calibrated
  config = _calibration_config()
  config.sampling.num_steps = 10
  config.sampling.tdas.enabled = True
  config.sampling.tdas.filter_file = summary["filter_file"]
  config.sampling.vanilla_comparison = False
  config.eval.batch_size = 8
  config.eval.num_samples = 8
  sampled = run_lib.sample(config, str(tmp_path))
  assert sampled["tdas"]["enabled"] and sampled["tdas"]["filter_file"] == summary["filter_file"]
  samples = np.load(tmp_path / "eval" / "samples_0.npz")["samples"]
  assert samples.shape == (8, 16, 16, 3)


def test_reference_set_is_computed_once_per_config_and_seed(calibrated):
  workdir, first = calibrated
  cache = os.path.join(workdir, "calibration", "cache")
  reference = os.path.join(cache, f"reference_100_{first['cache_key']}")
  stamps = {f: os.path.getmtime(os.path.join(reference, f)) for f in os.listdir(reference)}
  assert sorted(stamps) == ["batch_0.npz", "batch_1.npz"]
  config = _calibration_config(steps=20)
  config.calibrate.method = "radial"
  # With the data's frequency statistics (--mode stats), the behaviour functions come along.
  data_stats = os.path.join(workdir, "frequency_data.npz")
  np.savez(data_stats, dct_amplitude=np.full((16, 16), 0.5), dft_amplitude=np.ones((16, 16)))
  config.calibrate.data_stats_file = data_stats
  second = run_lib.calibrate(config, workdir)
  assert len(second["behaviour"]["accelerated"]) == 16
  assert os.path.isfile(os.path.join(workdir, "calibration", "behaviour_20.png"))
  assert second["cache_key"] == first["cache_key"]
  assert {f: os.path.getmtime(os.path.join(reference, f)) for f in os.listdir(reference)} == stamps
  assert len([d for d in os.listdir(cache) if d.startswith("reference_")]) == 1
  _, freq, info = tdas_files.load_filters(second["filter_file"], (16, 16, 3))
  assert info["method"] == "radial" and len(np.unique(freq)) > 3
  # Another seed is another reference set.
  config.calibrate.seed = 1
  assert calibration_sets.cache_key(config, "x", 1, 16) != calibration_sets.cache_key(
      config, "x", 0, 16)


def test_calibrate_fits_any_method_with_steps_and_sampling_takes_the_filter(tmp_path):
  config = _calibration_config()
  config.sampling.method = "dpmpp_2m_sde"
  summary = run_lib.calibrate(config, str(tmp_path))
  assert summary["sampler"] == "dpmpp_2m_sde" and summary["steps"] == 10
  _, freq, info = tdas_files.load_filters(summary["filter_file"], (16, 16, 3))
  assert info["sampler"] == "dpmpp_2m_sde" and np.all(np.isfinite(freq))
  config.sampling.num_steps = 10
  config.sampling.tdas.enabled = True
  config.sampling.tdas.filter_file = summary["filter_file"]
  config.eval.num_samples = config.eval.batch_size = 8
  sampled = run_lib.sample(config, str(tmp_path / "sampled"))
  assert sampled["method"] == "dpmpp_2m_sde" and sampled["nfe"] == 10
  assert sampled["tdas"]["filter_file"] == summary["filter_file"]


def test_calibrate_errors_are_clear(tmp_path):
  config = _calibration_config()
  config.calibrate.num_samples = 8
  with pytest.raises(ValueError, match="num_samples=8 is too few.*at least 16"):
    run_lib.calibrate(config, str(tmp_path))
  config = _calibration_config(steps=200)
  with pytest.raises(ValueError, match="exceeds model.num_scales=100"):
    run_lib.calibrate(config, str(tmp_path))
  config = _calibration_config()
  config.calibrate.method = "median"
  with pytest.raises(ValueError, match="config.calibrate.method='median'"):
    run_lib.calibrate(config, str(tmp_path))
  config = _calibration_config()
  config.sampling.method = "ode"
  with pytest.raises(ValueError, match="'ode' has no number of steps"):
    run_lib.calibrate(config, str(tmp_path))
  config = _calibration_config()
  config.calibrate.batch_size = 6
  with pytest.raises(ValueError, match="calibrate.batch_size=6 must be divisible"):
    run_lib.calibrate(config, str(tmp_path))
  config = _calibration_config()
  config.calibrate.steps = 0
  config.calibrate.speedup = 4.0
  assert calibration_sets.calibration_steps(config) == (100, 25)
  config.calibrate.speedup = 0.0
  config.sampling.num_steps = 40
  assert calibration_sets.calibration_steps(config) == (100, 40)


def _target_images(config, num, seed=0):
  """uint8 draws of the config's analytic target (an FFHQ-like Gaussian), clipped to [0, 1]."""
  import jax  # pylint: disable=g-import-not-at-top
  x = analytic.sample_target(jax.random.PRNGKey(seed), analytic.target_variables(config), num)
  return images.to_uint8(x, centered=False)


def test_stats_mode_writes_space_frequency_and_analytic_files(tmp_path):
  config = get_analytic_config(image_size=16, sigma_max=25)
  images = _target_images(config, 64)
  np.savez(tmp_path / "data.npz", images=images)
  config.data.path = str(tmp_path / "data.npz")
  config.sampling.tdas.space_alpha = 2.0
  summary = run_lib.stats(config, str(tmp_path / "work"))
  out = tmp_path / "work" / "stats"
  stem = "analytic_gaussian_ffhq_16"
  for name in ("space", "frequency", "analytic"):
    assert os.path.isfile(out / f"{name}_{stem}.npz"), name
  for name in ("space", "frequency"):
    assert os.path.isfile(out / f"{name}_{stem}.png"), name
  assert summary["num_images"] == 64
  with np.load(out / f"frequency_{stem}.npz") as frequency:
    assert frequency["dct_amplitude"].shape == frequency["dft_amplitude"].shape == (16, 16)
    assert int(frequency["num_images"]) == 64
  # The space file is what config.sampling.tdas.space_file takes.
  with np.load(out / f"space_{stem}.npz") as space:
    np.testing.assert_allclose(space["mean"], images.mean(axis=0) / 255.0, atol=1e-6)
    stored_space = space["space"]
  config.sampling.tdas.enabled = True
  config.sampling.tdas.space_file = str(out / f"space_{stem}.npz")
  tdas = tdas_settings.resolve(config)
  np.testing.assert_allclose(tdas.space, stored_space)
  assert tdas.space.min() >= 0.5  # alpha = 2
  # The analytic file is what config.model.target_file takes; it recovers the target roughly.
  truth = analytic.target_variables(config)["target"]
  config.model.target_file = summary["files"]["analytic"]
  fitted = analytic.target_variables(config)["target"]
  error = np.asarray(fitted["mean"]) - np.asarray(truth["mean"])
  assert np.sqrt(np.mean(error ** 2)) < 0.06  # 64 draws of per-pixel std 0.27: about 0.034
  ratio = float(np.sum(fitted["dct_variance"]) / np.sum(truth["dct_variance"]))
  assert 0.8 < ratio < 1.1  # uint8 clipping loses a little variance


def test_stats_mode_errors_name_the_data(tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  config = get_analytic_config(image_size=16, sigma_max=25)
  with pytest.raises(datasets.DatasetError, match="config.data.path is empty"):
    run_lib.stats(config, str(tmp_path))
  np.savez(tmp_path / "one.npz", images=np.zeros((1, 16, 16, 3), np.uint8))
  config.data.path = str(tmp_path / "one.npz")
  with pytest.raises(datasets.DatasetError, match="one.npz.*1 image.*at least 2"):
    run_lib.stats(config, str(tmp_path))


def test_command_line_stats_and_calibrate(tmp_path):
  """Both modes are wired into main.py; a user's mistake is one line, not a traceback."""
  images = (np.random.RandomState(0).rand(4, 32, 32, 3) * 255).astype(np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  common = [sys.executable, "main.py", "--config", "configs/analytic/ffhq32.py", "--workdir",
            str(tmp_path / "work")]
  result = subprocess.run(common + ["--mode", "stats", f"--config.data.path={tmp_path}/data.npz"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.isfile(tmp_path / "work" / "stats" / "frequency_analytic_gaussian_ffhq_32.npz")
  result = subprocess.run(common + ["--mode", "calibrate", "--config.calibrate.num_samples=3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "Error: config.calibrate.num_samples=3 is too few" in result.stderr
