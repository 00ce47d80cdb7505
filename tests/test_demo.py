"""The shipped digits demo: its NCSN++ checkpoint samples digits from a fresh clone, the digits
classifier behind the learned-model benchmark, and `benchmarks.learned_tdas` end to end (tiny)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import checkpoints
from benchmarks import learned_tdas
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier
from sampling import devices, factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def classifier():
  return digits_classifier.load_classifier()


def test_shipped_classifier_reads_held_out_digits(classifier):
  images, labels = digits_classifier.digits_split(evaluation=True)
  assert images.shape == (300, 16, 16, 1) and labels.shape == (300,)
  assert digits_classifier.accuracy(classifier, images, labels) >= 0.97
  info = digits_classifier.load_info()
  assert info["test_accuracy"] == pytest.approx(
      digits_classifier.accuracy(classifier, images, labels))


def test_quality_measure_separates_digits_from_noise(classifier):
  quality = digits_classifier.DigitsQuality(classifier)
  train, _ = digits_classifier.digits_split(evaluation=False)
  real = quality(train[:300])
  noise = quality(np.random.RandomState(0).rand(300, 16, 16, 1))
  assert real["frechet_distance"] < 0.2 * noise["frechet_distance"]
  assert real["label_entropy"] > 2.2  # all ten digits, about equally often (ln 10 = 2.30)
  assert real["mean_image_entropy"] < 0.2
  assert sum(real["label_histogram"]) == 300
  held_out, _ = digits_classifier.digits_split(evaluation=True)
  assert quality(held_out)["frechet_distance"] == pytest.approx(0.0, abs=1e-6)


def test_classifier_file_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "absent.msgpack")
  with pytest.raises(FileNotFoundError, match="absent.msgpack"):
    digits_classifier.load_classifier(missing)
  truncated = tmp_path / "cut.msgpack"
  truncated.write_bytes(open(digits_classifier.DEFAULT_WEIGHTS, "rb").read()[:1000])
  with pytest.raises(ValueError, match="cut.msgpack"):
    digits_classifier.load_classifier(str(truncated))


def test_shipped_model_samples_legible_digits_at_full_steps(classifier):
  """200 PC steps from the committed EMA weights: the classifier reads confident, varied digits."""
  config = digits_ncsnpp.get_config()
  devices.set_matmul_precision(config)
  variables, source = checkpoints.load_variables(config, "unused")
  assert source.startswith(os.path.join(REPO, "assets", "digits_ncsnpp"))
  sampler = factory.build(config, (40, 16, 16, 1))
  x, nfe = factory.run(sampler, jax.random.PRNGKey(7), variables, None, what="demo")
  assert nfe == 400
  measured = digits_classifier.DigitsQuality(classifier)(x)
  assert measured["mean_image_entropy"] < 0.35, measured
  assert measured["label_entropy"] > 1.9, measured
  assert max(measured["label_histogram"]) <= 12, measured


def test_readme_demo_command_samples_on_a_fresh_clone(tmp_path):
  workdir = tmp_path / "demo"
  result = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/demo/digits_ncsnpp.py", "--workdir",
       str(workdir), "--mode", "sample", "--speedup", "10", "--tdas",
       "--config.eval.num_samples=8", "--config.eval.batch_size=8"], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, XLA_FLAGS=""), timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  samples = np.load(workdir / "eval" / "samples_0.npz")["samples"]
  assert samples.shape == (8, 16, 16, 1) and samples.dtype == np.uint8
  assert (workdir / "eval" / "samples_grid.png").is_file()
  assert (workdir / "eval" / "vanilla_vs_tdas.png").is_file()
  summary = json.loads((workdir / "eval" / "sampling.json").read_text())
  assert summary["steps"] == 20 and summary["tdas"]["enabled"]
  assert summary["tdas"]["filter_file"].endswith("tdas_filters_20.npz")
  assert summary["grid_images"] == 8


def test_speedup_at_equal_distance_interpolates_the_crossing():
  budgets = [200, 100, 40, 20]
  # Meets the target down to 40 steps, crosses between 40 and 20 halfway in distance.
  factor = learned_tdas.speedup_at_equal_distance(budgets, [1.0, 0.9, 1.0, 3.0], 2.0)
  assert factor == pytest.approx(200 / np.exp((np.log(40) + np.log(20)) / 2))
  # Missing the target at N itself: no factor.
  assert np.isnan(learned_tdas.speedup_at_equal_distance(budgets, [3.0, 1.0, 1.0, 1.0], 2.0))
  assert learned_tdas.speedup_at_equal_distance(budgets, [1.0, 1.0, 1.0, 1.0], 2.0) == 10.0
  # A budget above the target stops the search even if a smaller one dips below again.
  assert learned_tdas.speedup_at_equal_distance(budgets, [1.0, 5.0, 1.0, 1.0], 2.0) == \
      pytest.approx(200 / np.exp(np.log(200) + 0.25 * (np.log(100) - np.log(200))))


def test_budgets_must_divide_the_full_steps():
  assert learned_tdas.budgets_of(200, ["1", "2", "5", "10", "20", "40"]) == [200, 100, 40, 20,
                                                                           10, 5]
  with pytest.raises(ValueError, match="--speedups 3"):
    learned_tdas.budgets_of(200, ["3"])


def test_benchmark_runs_end_to_end_on_a_tiny_budget(tmp_path):
  grids = str(tmp_path / "grids.png")
  result = learned_tdas.run(str(tmp_path / "work"), ["40"], num_samples=16, seeds=2,
                            calibration_samples=16, bins=4, grid_path=grids, space_alpha=1.0)
  assert result["budgets"] == [5]
  assert {r["method"] for r in result["rows"]} == set(learned_tdas.METHODS)
  assert len(result["rows"]) == 3 * 2
  for row in result["rows"]:
    assert row["nfe"] == 10 and np.isfinite(row["frechet_distance"]) and row["seconds"] > 0
  calibration = result["calibrations"][5]
  assert os.path.isfile(calibration["filter_file"])
  # The one-zone variant really uses the one-zone fit, so it differs from the zoned file's TDAS.
  by_method = {m: [r["frechet_distance"] for r in result["rows"] if r["method"] == m]
               for m in learned_tdas.METHODS}
  assert by_method["tdas"] != by_method["vanilla"]
  assert result["classifier"]["test_accuracy"] >= 0.97
  assert result["space_filter"] == dict(alpha=1.0, f="sqrt")
  assert os.path.isfile(grids)
  learned_tdas.plot(result, str(tmp_path / "plot.png"))
  assert os.path.isfile(tmp_path / "plot.png")
  assert "| 5 | 10 | vanilla |" in learned_tdas.table_text(result)
  json.dumps(result)  # JSON-ready
