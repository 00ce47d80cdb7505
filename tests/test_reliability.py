"""Runs that cannot mix settings, lose rounds or crash on bad values (the analytic model, CPU).

Round files carry a fingerprint; reruns keep only readable rounds of the same settings; processes
that share a folder claim rounds; counts and scales are checked before any work; `--mode eval`
reads other tools' files and refuses mixed runs or statistics of another image size.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import images
import run_lib
import sample_rounds
import sde_lib
import validation
from configs.analytic import ffhq32
from evaluation import evaluate as evaluation
from evaluation import statistics
from tdas import calibration
from tdas.settings import TDAS


def _config(num_samples=8, batch_size=4):
  config = ffhq32.get_config()
  config.eval.batch_size = batch_size
  config.eval.num_samples = num_samples
  config.sampling.num_steps = 4
  config.sampling.vanilla_comparison = False
  return config


def _rounds(out):
  return {f: np.load(os.path.join(out, f))["samples"] for f in sorted(os.listdir(out))
          if f.startswith("samples_") and f.endswith(".npz")}


@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory):
  """Two rounds of 4, vanilla: the folder every rerun below starts from."""
  workdir = str(tmp_path_factory.mktemp("vanilla"))
  summary = run_lib.sample(_config(), workdir)
  return workdir, summary, _rounds(os.path.join(workdir, "eval"))


def _fresh_copy(vanilla_run, tmp_path):
  workdir, _, rounds = vanilla_run
  out = tmp_path / "eval"
  out.mkdir()
  for name in rounds:
    with open(os.path.join(workdir, "eval", name), "rb") as f:
      (out / name).write_bytes(f.read())
  return str(tmp_path), str(out), rounds


def test_rounds_record_what_made_them(vanilla_run):
  workdir, summary, rounds = vanilla_run
  recorded = sample_rounds.read_fingerprint(os.path.join(workdir, "eval", "samples_1.npz"))
  assert recorded["round"] == 1 and recorded["steps"] == 4 and recorded["sampling.seed"] == 0
  assert recorded["tdas.enabled"] is False and recorded["batch_shape"] == [4, 32, 32, 3]
  assert len(recorded["variables_sha256"]) == 64
  assert summary["fingerprint"] == {k: v for k, v in recorded.items() if k != "round"}
  assert [r.shape for r in rounds.values()] == [(4, 32, 32, 3)] * 2


def test_rerun_with_other_settings_stops_and_names_the_fields(vanilla_run, tmp_path):
  workdir, out, rounds = _fresh_copy(vanilla_run, tmp_path)
  config = _config()
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  with pytest.raises(sample_rounds.FingerprintMismatch,
                     match=r"2 round\(s\).*tdas\.enabled: False -> True.*--discard_rounds"):
    run_lib.sample(config, workdir)
  assert _rounds(out).keys() == rounds.keys()  # nothing was touched
  assert not os.path.exists(os.path.join(out, "sampling.json"))
  # --discard_rounds: the old rounds go, TDAS's rounds replace them.
  summary = run_lib.sample(config, workdir, discard_rounds=True)
  assert summary["rounds_this_run"] == 2
  recorded = sample_rounds.read_fingerprint(os.path.join(out, "samples_0.npz"))
  assert recorded["tdas.enabled"] is True and recorded["tdas.lambda2"] == 0.8
  assert not np.array_equal(_rounds(out)["samples_0.npz"], rounds["samples_0.npz"])


def test_damaged_and_unfingerprinted_rounds_are_sampled_again(vanilla_run, tmp_path):
  workdir, out, rounds = _fresh_copy(vanilla_run, tmp_path)
  with open(os.path.join(out, "samples_1.npz"), "r+b") as f:
    f.truncate(300)
  # A round written before fingerprints existed: samples only.
  np.savez(os.path.join(out, "samples_0.npz"), samples=rounds["samples_0.npz"])
  summary = run_lib.sample(_config(), workdir)
  assert summary["rounds_this_run"] == 2
  again = _rounds(out)
  for name, samples in rounds.items():
    np.testing.assert_array_equal(again[name], samples)  # seed and round fix the samples
    assert sample_rounds.read_fingerprint(os.path.join(out, name)) is not None


def test_sample_count_that_is_not_a_multiple_of_the_batch(tmp_path):
  config = _config(num_samples=6)
  config.sampling.export_arr0 = True
  summary = run_lib.sample(config, str(tmp_path))
  out = tmp_path / "eval"
  assert summary["num_samples"] == 6 and summary["rounds"] == 2
  assert [r.shape[0] for r in _rounds(str(out)).values()] == [4, 2]
  exported = np.load(out / "arr0_6x32x32x3.npz")["arr_0"]
  assert exported.dtype == np.uint8 and exported.shape == (6, 32, 32, 3)
  full = _rounds(str(out))
  assert statistics.sample_files(str(out)) == [str(out / "samples_0.npz"),
                                               str(out / "samples_1.npz")]
  # More samples later: the short last round is sampled again at full size.
  config.eval.num_samples = 8
  config.sampling.export_arr0 = False
  assert run_lib.sample(config, str(tmp_path))["rounds_this_run"] == 1
  # The partial round held the first rows of the full batch the same seed gives.
  longer = _rounds(str(out))["samples_1.npz"]
  np.testing.assert_array_equal(longer[:2], full["samples_1.npz"])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hold_lock(folder, round_file, seconds):
  """Another process (numpy only, no JAX) that claims `round_file`, holds it for `seconds` and
  exits without writing it. Returns the process once it holds the claim."""
  script = ("import sys, time; sys.path.insert(0, sys.argv[1]); import sample_rounds; "
            "claim = sample_rounds.RoundClaims(sys.argv[2]).claim(sys.argv[3]); "
            "claim.__enter__(); print('held', flush=True); time.sleep(float(sys.argv[4]))")
  holder = subprocess.Popen([sys.executable, "-c", script, REPO, folder, round_file,
                             str(seconds)], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_round_claims_are_exclusive_and_freed_when_the_holder_dies(tmp_path):
  claims = sample_rounds.RoundClaims(str(tmp_path))
  path = str(tmp_path / "samples_0.npz")
  holder = _hold_lock(str(tmp_path), path, 60)
  assert claims.claim(path) is None  # a live process holds it
  assert f"pid {holder.pid}" in claims.holder(path)
  holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
  holder.wait()
  claim = claims.claim(path)
  assert claim is not None
  with claim:
    assert claims.claim(path) is None  # flock is per open file: a second claim waits here too
  assert not os.path.exists(tmp_path / ".samples_0.lock")


def test_a_round_held_by_another_process_is_waited_for_then_taken(tmp_path):
  """The other process holds round 1 and dies without writing it: this run samples the rest,
  waits, then samples round 1 itself."""
  out = tmp_path / "eval"
  out.mkdir()
  holder = _hold_lock(str(out), str(out / "samples_1.npz"), 8)
  summary = run_lib.sample(_config(num_samples=12), str(tmp_path))
  assert holder.wait() == 0  # it held round 1 to the end and wrote nothing
  assert summary["rounds_this_run"] == 3 and sorted(_rounds(str(out))) == [
      "samples_0.npz", "samples_1.npz", "samples_2.npz"]


@pytest.mark.parametrize("field, value, message", [
    ("eval.batch_size", 0, "config.eval.batch_size=0 must be a positive integer"),
    ("eval.batch_size", -4, "config.eval.batch_size=-4 must be a positive integer"),
    ("eval.num_samples", 0, "config.eval.num_samples=0 must be a positive integer"),
    ("eval.num_samples", -8, "config.eval.num_samples=-8"),
    ("model.num_scales", 0, "config.model.num_scales=0 must be a positive integer"),
    ("model.num_scales", -3, "config.model.num_scales=-3"),
    ("sampling.num_steps", -2, "config.sampling.num_steps=-2 must be an integer >= 0"),
    ("model.sigma_min", 0.0, "config.model.sigma_min=0.0 must be a finite positive"),
    ("model.sigma_max", 10 ** 400, "config.model.sigma_max=1000"),
    ("model.sigma_min", 500.0, "sigma_min=500.0 must be below config.model.sigma_max=50"),
])
def test_counts_and_scales_are_checked_before_any_work(tmp_path, field, value, message):
  config = _config()
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    run_lib.sample(config, str(tmp_path))
  assert not (tmp_path / "eval").exists() or not os.listdir(tmp_path / "eval")


def test_an_integer_sigma_is_taken_as_a_float():
  config = _config()
  config.model.sigma_max = 10 ** 30
  validation.check_sde(config)
  sde = sde_lib.get_sde(config)
  assert isinstance(sde.sigma_max, float)
  assert np.isfinite(np.asarray(sde.prior_from_noise(jnp.ones(2)))).all()


def test_an_unwritable_workdir_is_refused_before_sampling(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")  # a workdir below a file cannot be created
  with pytest.raises(PermissionError, match="Cannot write into .*file/eval"):
    run_lib.sample(_config(), str(blocker))


def test_write_check_names_the_folder(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="Cannot write into .*file/eval"):
    sample_rounds.check_writable(str(blocker / "eval"))


def test_filter_calibrated_for_other_steps_warns(caplog):
  tdas = TDAS(enabled=True, filter_file="filters_20.npz", filter_steps=20)
  with caplog.at_level("WARNING"):
    run_lib._warn_filter_steps(tdas, 200)  # pylint: disable=protected-access
    run_lib._warn_filter_steps(tdas, 20)  # pylint: disable=protected-access
  warnings = [r.getMessage() for r in caplog.records if "calibrated for 20 steps" in r.getMessage()]
  assert len(warnings) == 1 and "this run takes 200" in warnings[0]


def test_one_zone_rule_says_when_it_is_the_identity():
  centres = np.linspace(0.05, 0.95, 10)
  flat = calibration.fit_one_zone_filter(centres, np.ones(10))
  assert flat["identity"] and flat["r"] == 1.0 and flat["lambda"] == 1.0
  raised = calibration.fit_one_zone_filter(centres, np.r_[np.ones(6), np.full(4, 1.25)])
  assert not raised["identity"] and raised["lambda"] == pytest.approx(0.8)


def test_discrete_sigmas_are_score_sde_s_and_its_predictor_step_is_bit_identical():
  """score_sde: exp of a float64 np.linspace (cast to float32), G = sqrt(σ_i² − σ_{i−1}²)."""
  sigma_min, sigma_max, n = 0.01, 1348.0, 2000
  sde = sde_lib.VESDE(sigma_min, sigma_max, n)
  reference = jnp.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), n))
  np.testing.assert_array_equal(np.asarray(sde.discrete_sigmas), np.asarray(reference))
  key_x, key_z, key_s = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(key_x, (3, 4, 4, 1)) * 100
  z = jax.random.normal(key_z, x.shape)
  score = jax.random.normal(key_s, x.shape)
  t = jnp.asarray([1.0, 0.5, 1.0 / (n - 1)], jnp.float32)

  # score_sde's ReverseDiffusionPredictor.update_fn on its VESDE.discretize, transcribed.
  timestep = (t * (n - 1) / 1.0).astype(jnp.int32)
  sigma = reference[timestep]
  adjacent = jnp.where(timestep == 0, jnp.zeros_like(t), reference[timestep - 1])
  g = jnp.sqrt(sigma ** 2 - adjacent ** 2)
  rev_f = -(g ** 2)[:, None, None, None] * score
  expected_mean = x - rev_f
  expected = expected_mean + g[:, None, None, None] * z

  reverse = sde.reverse(lambda x_, t_: score, probability_flow=False)
  f, g_ours = reverse.discretize(x, t)
  np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g))
  np.testing.assert_array_equal(np.asarray(x - f), np.asarray(expected_mean))
  np.testing.assert_array_equal(np.asarray(x - f + g_ours[:, None, None, None] * z),
                                np.asarray(expected))


def test_small_grids_are_enlarged_for_people():
  grid = images.image_grid(np.zeros((4, 16, 16, 1), np.uint8))
  assert grid.shape == (2 * 64 + 2, 2 * 64 + 2, 1)
  assert images.image_grid(np.zeros((1, 128, 128, 3), np.uint8)).shape == (128, 128, 3)


def test_eval_reads_other_tools_files(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pictures = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "adm.npz", arr_0=pictures)
  np.testing.assert_array_equal(statistics.read_samples(str(tmp_path / "adm.npz")), pictures)
  folder = tmp_path / "pngs"
  folder.mkdir()
  for k, picture in enumerate(pictures):
    Image.fromarray(picture).save(folder / f"{k:05d}.png")
  files = statistics.sample_files(str(folder))
  assert len(files) == 5
  np.testing.assert_array_equal(np.concatenate(list(statistics.iterate_samples(files))),
                                pictures)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No samples"):
    statistics.sample_files(str(tmp_path / "empty"))


def test_eval_refuses_mixed_runs_and_statistics_of_another_size(vanilla_run, tmp_path):
  workdir, out, _ = _fresh_copy(vanilla_run, tmp_path)
  config = _config()
  stats_file = tmp_path / "stats16.npz"
  np.savez(stats_file, mu=np.zeros(4), sigma=np.eye(4), image_size="16")
  config.eval.stats_file = str(stats_file)
  with pytest.raises(ValueError, match="are 32 px, the statistics file .* for 16 px"):
    evaluation.evaluate_folder(config, workdir, out)
  other = dict(sample_rounds.read_fingerprint(os.path.join(out, "samples_1.npz")),
               **{"sampling.seed": 7})
  samples = np.load(os.path.join(out, "samples_1.npz"))["samples"]
  sample_rounds.write_round(os.path.join(out, "samples_1.npz"), samples,
                            {k: v for k, v in other.items() if k != "round"}, 1)
  with pytest.raises(ValueError, match=r"sampling\.seed: 0 -> 7.*mixes two runs"):
    evaluation.evaluate_folder(config, workdir, out)
