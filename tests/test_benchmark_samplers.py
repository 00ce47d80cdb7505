"""`benchmarks.samplers`' bookkeeping: budgets to steps, the summary and the ranking table (the
sampling itself is the samplers' own tests and `benchmarks.learned_tdas`' end-to-end test)."""
import pytest

from benchmarks import samplers
from benchmarks.sampler_budgets import steps_for


def test_steps_spend_at_most_the_budget():
  assert steps_for("pc", 20) == 10  # reverse diffusion + one Langevin step: 2 NFE
  assert steps_for("heun", 20) == 10  # 2n − 1 = 19
  assert steps_for("dpmpp_2m_sde", 20) == 20


def test_summary_and_table_rank_the_methods_per_budget():
  rows = []
  for method, base in (("pc", 900.0), ("heun", 60.0), ("dpmpp_2m_sde", 35.0)):
    for variant in ("vanilla", "tdas"):
      for seed in (0, 1):
        nfe = 19 if method == "heun" else 20
        rows.append(dict(method=method, variant=variant, steps=10, nfe=nfe, seed=seed,
                         frechet_distance=base + seed + (5 if variant == "tdas" else 0),
                         frequency_deviation=0.1, label_entropy=2.2, seconds=1.0))
  table = samplers.summarise(rows)
  heun = next(e for e in table if e["method"] == "heun" and e["variant"] == "vanilla")
  assert heun["nfe"] == 19 and heun["frechet_distance"] == 60.5
  result = dict(methods=["pc", "heun", "dpmpp_2m_sde"], table=table,
                real_floor=dict(frechet_distance=24.8, frechet_distance_std=1.1))
  text = samplers.table_text(result, [20])
  assert "| Heun | 60.5 ± 0.7 |" in text  # 19 NFE sits in the 20 column
  assert "| DPM-Solver++(2M) SDE | **35.5 ± 0.7** |" in text  # the best of the column
  assert "| real digits (floor) | 24.8 ± 1.1 |" in text


def test_merge_adds_an_earlier_runs_rows_and_budgets():
  def row(method, variant, nfe, seed, fd):
    return dict(method=method, variant=variant, steps=nfe, nfe=nfe, seed=seed,
                frechet_distance=fd, frequency_deviation=0.1, label_entropy=2.2, seconds=1.0)
  earlier_rows = [row("euler", "vanilla", 20, s, 60.0 + s) for s in (0, 1)] + [
      row("heun", "vanilla", 19, s, 50.0) for s in (0, 1)] + [
      row("euler", "tdas", 10, 0, 99.0)]
  earlier = dict(config="c", num_samples=250, methods=["euler", "heun"], seeds=2, budgets=[20],
                 calibrations={"euler_20": 1}, real_floor=dict(frechet_distance=24.8),
                 rows=earlier_rows, table=samplers.summarise(earlier_rows))
  new_rows = [row("euler", "tdas", 10, s, 70.0 + s) for s in (0, 1)]
  result = dict(config="c", num_samples=250, methods=["euler"], seeds=2, budgets=[10],
                calibrations={"euler_10": 2}, real_floor={}, rows=new_rows,
                table=samplers.summarise(new_rows))
  merged = samplers.merge(earlier, result)
  assert merged["budgets"] == [10, 20]
  assert merged["methods"] == ["euler", "heun"] and len(merged["rows"]) == 6
  tdas = next(e for e in merged["table"] if e["variant"] == "tdas")
  assert tdas["frechet_distance"] == 70.5  # this run's seed-0 row replaced the earlier one
  assert merged["calibrations"] == {"euler_20": 1, "euler_10": 2}
  result["num_samples"] = 100
  with pytest.raises(ValueError, match="num_samples"):
    samplers.merge(earlier, result)
  del earlier["budgets"]
  with pytest.raises(ValueError, match="no `budgets`"):
    samplers.merge(earlier, result)
