"""`--mode sample` end to end on the released-format checkpoint (FFHQ architecture, CPU, 3 steps)."""
import json
import os
import shutil

import numpy as np
import pytest

import run_lib
from configs.analytic import ffhq32
from configs.project_fields import add_project_fields
from reference_cases import GOLDEN_DIR, golden_case
from sampling import factory

RELEASED_WORKDIR = os.path.join(GOLDEN_DIR, "score_sde_checkpoint", "ncsnpp_ffhq_small")


def _config():
  config = add_project_fields(golden_case("ncsnpp_ffhq_small")["config"].copy_and_resolve_references())
  config.eval.batch_size = 4
  config.eval.num_samples = 8
  config.sampling.num_steps = 3
  config.sampling.checkpoint_dir = os.path.join(RELEASED_WORKDIR, "checkpoints")
  return config


@pytest.fixture(scope="module")
def released_run(tmp_path_factory):
  """The released-format checkpoint sampled with TDAS on, 4 devices, one round of 4."""
  workdir = str(tmp_path_factory.mktemp("ffhq_small"))
  config = _config()
  config.eval.num_samples = 4
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  config.sampling.vanilla_comparison = False
  return workdir, run_lib.sample(config, workdir)


def test_released_checkpoint_samples_with_tdas(released_run):
  workdir, summary = released_run
  out = os.path.join(workdir, "eval")
  samples = np.load(os.path.join(out, "samples_0.npz"))["samples"]
  assert samples.shape == (4, 32, 32, 3) and samples.dtype == np.uint8
  on_disk = json.load(open(os.path.join(out, "sampling.json")))
  assert on_disk == json.loads(json.dumps(summary))
  assert on_disk["steps"] == 3 and on_disk["nfe"] == 6 and on_disk["num_samples"] == 4
  assert on_disk["device_count"] == 4 and on_disk["tdas"]["enabled"]
  assert on_disk["tdas"]["lambda2"] == 0.8 and on_disk["seconds_per_step"] > 0
  assert summary["source"].endswith("checkpoint_3")
  assert os.path.isfile(os.path.join(out, "samples_grid.png"))
  assert on_disk["grid_images"] == 4  # the grid shows round 0 whole


def _analytic_config():
  config = ffhq32.get_config()
  config.eval.batch_size = 4
  config.eval.num_samples = 8
  config.sampling.num_steps = 20
  return config


@pytest.fixture(scope="module")
def analytic_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("analytic"))
  config = _analytic_config()
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  return config, workdir, run_lib.sample(config, workdir)


def test_sample_writes_rounds_grid_comparison_and_summary(analytic_run):
  _, workdir, summary = analytic_run
  out = os.path.join(workdir, "eval")
  for name in ("samples_0.npz", "samples_1.npz", "samples_grid.png", "vanilla_vs_tdas.png",
               "sampling.json"):
    assert os.path.isfile(os.path.join(out, name)), name
  assert summary["rounds"] == 2 and summary["nfe"] == 40
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_rerun_skips_finished_rounds(analytic_run):
  config, workdir, _ = analytic_run
  out = os.path.join(workdir, "eval")
  kept = np.load(os.path.join(out, "samples_0.npz"))["samples"]
  redrawn = np.load(os.path.join(out, "samples_1.npz"))["samples"]
  os.remove(os.path.join(out, "samples_1.npz"))
  config.sampling.vanilla_comparison = False
  summary = run_lib.sample(config, workdir)
  assert summary["rounds_this_run"] == 1
  np.testing.assert_array_equal(np.load(os.path.join(out, "samples_0.npz"))["samples"], kept)
  # The round's key depends only on the seed and the round: the redrawn round is the same.
  np.testing.assert_array_equal(np.load(os.path.join(out, "samples_1.npz"))["samples"], redrawn)


def test_nan_round_is_an_error_and_is_not_written(tmp_path):
  config = _analytic_config()
  config.sampling.snr = 1e30  # a Langevin step size no sampler survives
  with pytest.raises(factory.SamplingError, match="Round 0: .* NaN or inf"):
    run_lib.sample(config, str(tmp_path))
  assert not [f for f in os.listdir(tmp_path / "eval") if f.startswith("samples_")]


def test_missing_checkpoint_names_the_folder(tmp_path):
  config = _config()
  config.sampling.checkpoint_dir = ""
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    run_lib.sample(config, str(tmp_path))


def test_pytorch_release_checkpoint_samples_with_and_without_tdas(tmp_path):
  """A score_sde_pytorch `.pth` in <workdir>/checkpoints/ is found and sampled like a JAX one."""
  import json as json_lib  # pylint: disable=g-import-not-at-top
  from reference_cases import config_from_dict  # pylint: disable=g-import-not-at-top
  source = os.path.join(GOLDEN_DIR, "score_sde_pytorch_checkpoint", "ncsnpp_ffhq_small")
  (tmp_path / "checkpoints").mkdir()
  shutil.copy(os.path.join(source, "checkpoint_26.pth"), tmp_path / "checkpoints")
  with np.load(os.path.join(source, "reference.npz")) as reference:
    config = add_project_fields(config_from_dict(json_lib.loads(str(reference["config_json"]))))
  config.eval.batch_size = 4
  config.eval.num_samples = 4
  config.sampling.num_steps = 2
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  summary = run_lib.sample(config, str(tmp_path))
  assert summary["source"].endswith("checkpoint_26.pth") and summary["nfe"] == 4
  for name in ("samples_0.npz", "vanilla_vs_tdas.png"):
    assert os.path.isfile(tmp_path / "eval" / name)


def test_ode_method_samples_with_tdas_initial_noise(tmp_path):
  config = _analytic_config()
  config.eval.num_samples = 4
  config.sampling.method = "ode"
  config.sampling.ode.rtol = config.sampling.ode.atol = 1e-3
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  config.sampling.vanilla_comparison = False
  summary = run_lib.sample(config, str(tmp_path))
  assert summary["method"] == "ode" and summary["nfe"] > 10
  samples = np.load(tmp_path / "eval" / "samples_0.npz")["samples"]
  assert samples.shape == (4, 32, 32, 3)
