"""`benchmarks.samplers`' bookkeeping: budgets to steps, the summary and the ranking table (the
sampling itself is the samplers' own tests and `benchmarks.learned_tdas`' end-to-end test)."""
import pytest

from benchmarks import ranking
from benchmarks import samplers
from benchmarks.sampler_budgets import steps_for


def test_steps_spend_at_most_the_budget():
  assert steps_for("pc", 20) == 10  # reverse diffusion + one Langevin step: 2 NFE
  assert steps_for("heun", 20) == 10  # 2n − 1 = 19
  assert steps_for("dpmpp_2m_sde", 20) == 20


def _rows(cells, seeds=(0, 1, 2), num_samples=250):
  """Rows of {(method, variant, nfe): (base, per-seed offsets)} in the benchmark's shape."""
  rows = []
  for (method, variant, nfe), (base, offsets) in cells.items():
    for seed in seeds:
      rows.append(dict(method=method, variant=variant, steps=nfe, nfe=nfe, seed=seed,
                       num_samples=num_samples, frechet_distance=base + offsets[seed],
                       kernel_distance=(base + offsets[seed]) / 10, frequency_deviation=0.1,
                       label_entropy=2.2, seconds=1.0))
  return rows


def test_summary_comparisons_and_table_rank_the_methods_per_budget():
  luck = [0.0, 9.0, -6.0]  # each seed's shared luck: common random numbers
  rows = _rows({
      ("pc", "vanilla", 20): (900.0, luck),
      ("pc", "tdas", 20): (300.0, [l + d for l, d in zip(luck, [0.0, 1.0, -1.0])]),
      ("pc", "pds", 20): (700.0, luck),
      ("heun", "vanilla", 19): (60.0, [l + d for l, d in zip(luck, [0.1, -0.1, 0.0])]),
      ("heun", "tdas", 19): (60.0, [l + d for l, d in zip(luck, [0.5, -0.5, 0.0])]),
      ("dpmpp_2m_sde", "vanilla", 20): (35.0, luck)})
  table = ranking.summarise(rows)
  heun = next(e for e in table if e["method"] == "heun" and e["variant"] == "vanilla")
  assert heun["nfe"] == 19 and heun["frechet_distance"] == pytest.approx(61.0)
  assert heun["frechet_distance_per_seed"] == {"0": 60.1, "1": 68.9, "2": 54.0}
  assert heun["frechet_distance_low"] < 50 and heun["frechet_distance_high"] > 70  # seed spread
  found = ranking.comparisons(rows, [20])
  heun_vs_best = next(c for c in found if c["kind"] == "sampler" and c["method"] == "heun"
                      and c["variant"] == "vanilla")
  # Paired on the seeds, the shared luck cancels: 25 ± a little is 'worse' despite the spread.
  assert heun_vs_best["frechet_distance"]["mean"] == pytest.approx(25.0)
  assert heun_vs_best["frechet_distance"]["verdict"] == "worse"
  assert heun_vs_best["kernel_distance"]["verdict"] == "worse"
  heun_tdas = next(c for c in found if c["kind"] == "tdas" and c["method"] == "heun")
  assert heun_tdas["frechet_distance"]["verdict"] == "no difference measured"
  pc_tdas = next(c for c in found if c["kind"] == "tdas" and c["method"] == "pc")
  assert pc_tdas["frechet_distance"]["verdict"] == "better"
  assert not any(c["method"] == "dpmpp_2m_sde" and c["variant"] == "vanilla" for c in found)
  result = dict(methods=["pc", "heun", "dpmpp_2m_sde"], table=table, comparisons=found,
                num_samples=250, real_floor={"250": dict(
                    frechet_distance=24.8, frechet_distance_per_seed={"0": 24.0, "1": 25.6},
                    kernel_distance=1.0, kernel_distance_per_seed={"0": 1.0, "1": 1.0})})
  text = ranking.table_text(result, [20])
  assert "| Heun | 61.0 ± 18.6; +25.0 [+24.8, +25.2] worse |" in text  # 19 NFE: the 20 column
  assert "| DPM-Solver++(2M) SDE | **36.0 ± 18.8** (baseline) |" in text  # best vanilla
  assert "| Heun: TDAS − vanilla | +0.0 [-1.0, +1.0] no difference measured (detectable 1.2) |" \
      in text
  assert "| PC (reverse diffusion + Langevin): TDAS − vanilla | -600.0 [-602.5, -597.5] better |" \
      in text
  assert "| real digits, N = 250 (floor) | 24.8 ± 10.2 |" in text
  assert "| PC (reverse diffusion + Langevin): PDS − vanilla | -200.0 [-200.0, -200.0] better |" \
      in text
  assert "| PC (reverse diffusion + Langevin): PDS − TDAS | +400.0 [+397.5, +402.5] worse |" in text
  assert "| DPM-Solver++(2M) SDE | **3.60 ± 1.88** (baseline) |" in ranking.table_text(
      result, [20], "kernel_distance", 2)


def test_merge_keeps_rows_of_every_sample_count_and_pairs_within_one():
  earlier_rows = (_rows({("euler", "vanilla", 20): (60.0, [0.0, 1.0, 2.0]),
                         ("dpmpp_2m_sde", "vanilla", 20): (35.0, [0.0, 1.0, 2.0])})
                  + _rows({("euler", "tdas", 10): (99.0, [0.0, 0.0, 0.0])}, seeds=(0,)))
  earlier = dict(config="c", num_samples=250, methods=["euler", "dpmpp_2m_sde"], seeds=3,
                 budgets=[20], calibrations={"euler_20": 1},
                 real_floor=dict(frechet_distance=24.8, num_samples=250), rows=earlier_rows)
  new_rows = (_rows({("euler", "tdas", 10): (70.0, [0.0, 1.0, 2.0])}, seeds=(0, 1))
              + _rows({("dpmpp_2m_sde", "vanilla", 20): (33.0, [0.0, 0.5, 1.0])},
                      num_samples=1000))
  result = dict(config="c", num_samples=1000, methods=["euler", "dpmpp_2m_sde"], seeds=3,
                budgets=[10], calibrations={"euler_10": 2},
                real_floor={"1000": dict(frechet_distance=20.0)}, rows=new_rows)
  merged = samplers.merge(earlier, result)
  assert merged["budgets"] == [10, 20] and merged["num_samples"] == 1000
  assert merged["methods"] == ["euler", "dpmpp_2m_sde"] and len(merged["rows"]) == 11
  tdas = next(e for e in merged["table"] if e["variant"] == "tdas")
  assert tdas["frechet_distance"] == 70.5  # this run's seed-0 row replaced the earlier one
  assert merged["calibrations"] == {"euler_20": 1, "euler_10": 2}
  assert set(merged["real_floor"]) == {"250", "1000"}
  versus = [c for c in merged["comparisons"] if c["kind"] == "sampler"]
  # Euler (250 samples) pairs with the 250-sample baseline, not the 1000-sample one.
  assert [(c["method"], c["num_samples"]) for c in versus] == [("euler", 250)]
  assert versus[0]["frechet_distance"]["mean"] == pytest.approx(25.0)
  for row in merged["rows"]:
    if row["num_samples"] == 250:
      del row["kernel_distance"]  # as in runs from before KID was measured
  merged["table"] = ranking.summarise(merged["rows"])
  kid = ranking.table_text(merged, merged["budgets"], "kernel_distance", 2)
  assert "| DPM-Solver++(2M) SDE |  | **3.35 ± 0.12** (baseline) |" in kid and "Euler |" not in kid
  result["config"] = "other"
  with pytest.raises(ValueError, match="another config"):
    samplers.merge(earlier, result)
  del earlier["budgets"]
  with pytest.raises(ValueError, match="no `budgets`"):
    samplers.merge(earlier, result)


def test_analytic_tables_pair_w2_per_case_and_measure_the_excess_over_the_floor():
  from benchmarks import samplers_analytic  # pylint: disable=g-import-not-at-top
  rows = []
  for seed, luck in enumerate([0.0, 0.004, -0.002]):
    for method, variant, w2 in (("dpmpp_2m_sde", "vanilla", 0.030), ("heun", "vanilla", 0.060),
                                ("heun", "tdas", 0.040)):
      rows.append(dict(case="mean 0.5, exact score", method=method, variant=variant, steps=20,
                       nfe=19 if method == "heun" else 20, seed=seed, num_samples=500,
                       w2_floor=0.010 + luck / 4, w2=w2 + luck + 0.0001 * seed))
  tables = samplers_analytic.tables(rows, [20], 500)
  case = tables["mean 0.5, exact score"]
  heun_tdas = next(c for c in case["comparisons"] if c["kind"] == "tdas")
  assert heun_tdas["w2"]["mean"] == pytest.approx(-0.02) and heun_tdas["w2"]["verdict"] == "better"
  best = next(e for e in case["table"] if e["method"] == "dpmpp_2m_sde")
  assert best["excess_over_floor"]["mean"] == pytest.approx(0.0206)  # 0.02 + ¾ mean luck + …
  assert best["excess_over_floor"]["low"] > 0  # the sampler's W2 is above the floor
  text = samplers_analytic.table_text(dict(tables=tables, methods=["heun", "dpmpp_2m_sde"],
                                           num_samples=500), [20])
  assert "| Heun: TDAS − vanilla | -0.0200 [-0.0200, -0.0200] better |" in text
  assert "| exact samples, N = 500 (floor) |" in text


def test_inpainting_table_pairs_the_variants_per_digit():
  from benchmarks import inpainting  # pylint: disable=g-import-not-at-top
  vanilla = [1] * 60 + [0] * 40
  tdas = [1] * 60 + [1] * 20 + [0] * 20  # 20 digits more read correctly, none fewer
  result = dict(original_accuracy=1.0, masked_input_accuracy=0.3, rows=[
      dict(steps=20, nfe=40, variant="vanilla", accuracy=0.6, correct=vanilla),
      dict(steps=20, nfe=40, variant="tdas", accuracy=0.8, correct=tdas)])
  text = inpainting.table_text(result)
  assert "| 20 | 40 | 0.600 ± 0.098 | 0.800 ± 0.080 | +0.200 [+0.120, +0.280] better |" in text


def test_analytic_tdas_tables_pair_tdas_with_vanilla_and_the_fits_with_the_first():
  from benchmarks import analytic_tdas  # pylint: disable=g-import-not-at-top
  rows = []
  for seed, luck in enumerate([0.0, 0.004, -0.002]):
    floor = 0.010 + luck / 4
    for variant, fit, w2 in (("vanilla", None, 0.050), ("tdas", "zones", 0.020),
                             ("tdas", "radial", 0.020 - 0.001 * seed)):
      rows.append(dict(variant=variant, fit=fit, score_error=True, steps=25, nfe=50, seed=seed,
                       num_samples=256, w2=w2 + luck, w2_floor=floor))
  entries = analytic_tdas.tables(rows)
  zones, radial = entries
  assert zones["fit"] == "zones" and radial["fit"] == "radial"
  assert zones["tdas_minus_vanilla"]["mean"] == pytest.approx(-0.03)
  assert zones["tdas_minus_vanilla"]["verdict"] == "better"
  # share of the excess removed, (v − t) / (v − floor) per seed: 0.03 / (0.04 + ¾ luck)
  expected = sum(0.03 / (0.04 + 0.75 * luck) for luck in (0.0, 0.004, -0.002)) / 3
  assert zones["excess_removed"]["mean"] == pytest.approx(expected)
  assert "minus_zones" not in zones
  assert radial["minus_zones"]["mean"] == pytest.approx(-0.001)
  assert radial["minus_zones"]["verdict"] == "no difference measured"  # −0.001 ± 0.0025
  filters = {"1/25": {"zones": dict(r1=0.0, r2=0.5, lambda1=0.9, lambda2=0.95),
                      "radial": dict(radial_gains=[0.9, 1.0])}}
  text = analytic_tdas.table(dict(tables=entries, filters=filters, num_samples=256))
  assert ("| yes | 25 | 50 | 0.0507 ± 0.0076 | 0.0207 ± 0.0076 | -0.0300 [-0.0300, -0.0300] "
          "better |") in text
  assert "| 0.00, 0.50, 0.900, 0.950 |" in text
  assert "| yes | 25 | `radial` |" in text and "(detectable" in text


def test_guidance_tables_pair_each_scale_with_unguided_and_tdas_with_vanilla():
  from benchmarks import guidance  # pylint: disable=g-import-not-at-top
  rows = []
  for seed, luck in enumerate([0.0, 0.02, -0.01]):
    for variant, scale, accuracy, distance in (
        ("vanilla", 0.0, 0.10, 30.0), ("vanilla", 2.0, 0.90, 34.0),
        ("tdas", 0.0, 0.10, 30.0 + seed), ("tdas", 2.0, 0.92, 33.0)):
      rows.append(dict(method="dpmpp_2m_sde", variant=variant, steps=20, nfe=20, scale=scale,
                       seed=seed, num_samples=500, accuracy=accuracy + luck,
                       frechet_distance=distance + 10 * luck))
  entries = {(e["variant"], e["scale"]): e for e in guidance.tables(rows)}
  guided = entries[("vanilla", 2.0)]
  assert guided["accuracy_minus_unguided"]["mean"] == pytest.approx(0.8)
  assert guided["accuracy_minus_unguided"]["verdict"] == "better"  # higher accuracy is better
  assert guided["frechet_distance_minus_unguided"]["verdict"] == "worse"
  assert "accuracy_minus_vanilla" not in guided and "accuracy_minus_unguided" not in entries[
      ("vanilla", 0.0)]
  tdas = entries[("tdas", 2.0)]
  assert tdas["accuracy_minus_vanilla"]["mean"] == pytest.approx(0.02)
  assert tdas["frechet_distance_minus_vanilla"]["verdict"] == "better"
  assert entries[("tdas", 0.0)]["frechet_distance_minus_vanilla"]["verdict"] == (
      "no difference measured")  # +0, +1, +2
  text = guidance.table_text(dict(tables=guidance.tables(rows)))
  assert "| DPM-Solver++(2M) SDE | 20 | 500 | vanilla | 2 | 0.903 ± 0.038 | " \
         "+0.800 [+0.800, +0.800] better |  |" in text
  assert "Fréchet distance:" in text and "Kernel distance" not in text  # no KID in these rows
  # Merged with a smaller run: its rows form their own cells (never paired across sample
  # counts), and a row repeated in a later run replaces the earlier one.
  small = [dict(r, num_samples=200, accuracy=r["accuracy"] - 0.1) for r in rows]
  again = dict(rows[0], accuracy=0.5)
  merged = guidance.merge_rows(rows, small, [again])
  assert len(merged) == 2 * len(rows)
  cells = {(e["num_samples"], e["variant"], e["scale"]): e for e in guidance.tables(merged)}
  assert cells[(200, "vanilla", 2.0)]["accuracy_minus_unguided"]["mean"] == pytest.approx(0.8)
  assert cells[(500, "vanilla", 0.0)]["accuracy"]["mean"] == pytest.approx(
      (0.5 + 0.12 + 0.09) / 3)


def test_digits_quality_reads_the_requested_class_in_the_same_pass():
  from evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
  from benchmarks import guidance  # pylint: disable=g-import-not-at-top
  quality = digits_classifier.DigitsQuality(digits_classifier.load_classifier())
  images, labels = digits_classifier.digits_split(evaluation=True)
  right = guidance.measure(quality, images, labels)
  assert right["accuracy"] > 0.99 and min(right["per_class_accuracy"]) > 0.9
  wrong = guidance.measure(quality, images, (labels + 1) % 10)
  assert wrong["accuracy"] < 0.05
  assert wrong["frechet_distance"] == right["frechet_distance"]  # the labels change only these
