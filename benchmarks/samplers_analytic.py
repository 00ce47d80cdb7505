"""Every sampler at equal NFE on the analytic Gaussian (exact W2), vanilla and with TDAS calibrated
for that sampler and budget.

    python -m benchmarks.samplers_analytic --out benchmarks/results/samplers_analytic.json
    python -m benchmarks.samplers_analytic --config lsun256 --cases 1 --nfe 20 \
        --methods heun --batch_size 500 --out samplers_analytic_256.json      # the 256 px point

The target is `configs/analytic/ffhq64.py`'s Gaussian (64 px, VE σ_max = 100; `--config lsun256`:
256 px, σ_max = 348, LSUN-like mean), with its mean and with mean 0, with and without the score
error of docs/numerics.md §7 (a model that under-corrects high frequencies at low noise, as the TDAS
paper measured for NCSN++).
For each case, method, NFE budget and seed it draws `--num_samples` samples and reports the
per-dimension W2 to the target (`models.analytic.dct_diagonal_w2`; its floor is that of as many
exact samples), with 95 % intervals over the seeds and differences paired on them: against
DPM-Solver++(2M) SDE, and TDAS against vanilla (`benchmarks.ranking`). At the `--tdas_nfe`
budgets TDAS is calibrated as `--mode calibrate` does, from
the method's own samples: Dev = S(budget) / S(reference) with the reference at `--reference_nfe`
(PC: the config's 2000 steps), zones fitted by least squares; then the method samples again with
that filter. Writes JSON and prints the README's table.
"""
import importlib
import json
import os

from absl import app, flags, logging
import jax
import numpy as np

import errors
from atomic_io import atomic_write_text
from benchmarks import paired_stats
from benchmarks import ranking
from benchmarks.sampler_budgets import METHODS, configure, steps_for
from models import analytic
from sampling import factory
from tdas import calibration
from tdas import stats as tdas_stats
from tdas.settings import TDAS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "samplers_analytic.json", "JSON output.")
  flags.DEFINE_string("config", "ffhq64", "Analytic config under configs/analytic/.")
  flags.DEFINE_list("cases", ["0", "1", "2", "3"], "Indices of the cases run (CASES: 0 mean, exact "
                    "score; 1 mean, score error; 2 mean 0, exact; 3 mean 0, score error).")
  flags.DEFINE_integer("batch_size", 0, "Samples per sampler call (0: all of a point at once); "
                       "smaller batches bound the memory at 256 px.")
  flags.DEFINE_list("methods", list(METHODS), "Methods to rank.")
  flags.DEFINE_list("nfe", ["10", "20", "40", "80"], "NFE budgets.")
  flags.DEFINE_list("tdas_nfe", ["20"], "Budgets at which each method is also run with TDAS.")
  flags.DEFINE_integer("reference_nfe", 400, "NFE of the calibration reference (not PC, which "
                       "takes the config's full 2000 steps).")
  flags.DEFINE_integer("num_samples", 1000, "Samples per point and seed.")
  flags.DEFINE_integer("seeds", 3, "Seeds per point: every method and variant draws from the same "
                       "seeds, and differences are paired on them (benchmarks.paired_stats).")
  flags.DEFINE_integer("calibration_samples", 256, "Samples per calibration set.")
  flags.DEFINE_list("mean_blind", ["pc"], "Methods run on the mean-0.5 targets only: at "
                    "σ_max = 100 VE PC's W2 moves by < 1e-5 with the target's mean (measured), "
                    "so their mean-0 rows would repeat the others.")


FLAGS = flags.FLAGS

CASES = (("mean 0.5, exact score", False, True), ("mean 0.5, score error", True, True),
         ("mean 0, exact score", False, False), ("mean 0, score error", True, False))


def case_config(score_error: bool, with_mean: bool, config_name: str = "ffhq64"):
  config = importlib.import_module(f"configs.analytic.{config_name}").get_config()
  config.model.score_error = score_error
  if not with_mean:
    config.model.target_mean, config.model.target_mean_radial = (0.0, 0.0, 0.0), 0.0
  config.sampling.tdas.enabled = False
  return config


_SAMPLERS = {}


def draw(config, method, steps, num, seed, tdas=None, batch_size=0):
  """(samples (num, H, W, C), NFE per sample); one compiled sampler per (method, steps, score
  error, batch), shared by the targets (the target is an argument: its mean and variances are
  the model's variables). With `batch_size` the samples come in chunks, chunk i from
  fold_in(PRNGKey(seed), i); without it, in one call from PRNGKey(seed)."""
  size, channels = config.data.image_size, config.data.num_channels
  batch = min(batch_size or num, num)
  key = (method, steps, bool(config.model.score_error), batch, size)
  if key not in _SAMPLERS:
    _SAMPLERS[key] = factory.build(configure(config, method, steps),
                                   (batch, size, size, channels))
  variables = analytic.target_variables(config)
  chunks, nfe = [], 0
  for index in range(-(-num // batch)):
    rng = jax.random.PRNGKey(seed)
    if batch < num:
      rng = jax.random.fold_in(rng, index)
    x, nfe = _SAMPLERS[key].sample(rng, variables, tdas)
    chunks.append(np.asarray(x))
  return np.concatenate(chunks)[:num], int(nfe)


def run(methods, budgets, tdas_budgets, reference_nfe, num_samples, calibration_samples,
        mean_blind=(), config_name="ffhq64", cases=(0, 1, 2, 3), batch_size=0, seeds=1):
  """Rows {case, method, variant, steps, nfe, seed, num_samples, w2, w2_floor}: one per sample
  set, vanilla and TDAS drawn from the same seeds; the floor of seed s is W2 of as many exact
  samples drawn from PRNGKey(99 + s)."""
  rows, filters = [], {}
  for case, score_error, with_mean in (CASES[i] for i in cases):
    config = case_config(score_error, with_mean, config_name)
    variables = analytic.target_variables(config)
    floors = [analytic.dct_diagonal_w2(np.asarray(analytic.sample_target(
        jax.random.PRNGKey(99 + seed), variables, num_samples)), variables)
              for seed in range(seeds)]
    for method in methods:
      if method in mean_blind and not with_mean:
        continue
      reference = None
      for nfe_budget in budgets:
        steps = steps_for(method, nfe_budget)
        variants = [("vanilla", None)]
        if nfe_budget in tdas_budgets:
          if reference is None:
            full = 2000 if method == "pc" else steps_for(method, reference_nfe)
            reference = tdas_stats.mean_amplitude(
                draw(config, method, full, calibration_samples, 1000,
                     batch_size=batch_size)[0], "dct")
          accelerated = tdas_stats.mean_amplitude(
              draw(config, method, steps, calibration_samples, 1000, batch_size=batch_size)[0],
              "dct")
          fit = calibration.calibrate_frequency_filter(reference, accelerated, 3, "dct",
                                                       "zones", 16)
          filters[f"{case}/{method}/{steps}"] = {k: fit["zones"][k]
                                                 for k in ("r1", "r2", "lambda1", "lambda2")}
          variants.append(("tdas", TDAS.from_arrays(freq=fit["freq"])))
        for variant, tdas in variants:
          for seed in range(seeds):
            x, nfe = draw(config, method, steps, num_samples, seed, tdas, batch_size=batch_size)
            row = dict(case=case, method=method, variant=variant, steps=steps, nfe=nfe,
                       seed=seed, num_samples=num_samples, w2_floor=floors[seed],
                       w2=analytic.dct_diagonal_w2(x, variables))
            rows.append(row)
            logging.info("%s", row)
  return dict(config=f"configs/analytic/{config_name}.py", num_samples=num_samples, seeds=seeds,
              mean_blind=list(mean_blind), calibration_samples=calibration_samples,
              reference_nfe=reference_nfe, filters=filters,
              device=str(jax.devices()[0].device_kind), rows=rows,
              tables=tables(rows, budgets, num_samples))


def tables(rows, budgets, num_samples) -> dict:
  """Per case: the ranking's summary and paired comparisons of W2 (`benchmarks.ranking`), the
  floor with its per-seed values, and each cell's excess over the floor (W2 − floor per seed)."""
  found = {}
  for case, _, _ in CASES:
    chosen = [r for r in rows if r["case"] == case]
    if not chosen:
      continue
    floor_per_seed = {str(r["seed"]): r["w2_floor"] for r in chosen}
    floor = paired_stats.t_interval(list(floor_per_seed.values()))
    summary = ranking.summarise(chosen, measures=("w2",), extras=())
    for entry in summary:
      excess = paired_stats.t_interval([r["w2"] - r["w2_floor"] for r in chosen
                                        if ranking.cell_key(r) == ranking.cell_key(entry)])
      entry["excess_over_floor"] = excess.to_json()
    found[case] = dict(table=summary, comparisons=ranking.comparisons(chosen, budgets, ("w2",)),
                       real_floor={str(num_samples): dict(
                           w2=floor.mean, w2_low=floor.low, w2_high=floor.high,
                           w2_per_seed=floor_per_seed)})
  return found


def table_text(result, budgets) -> str:
  """Per case: `benchmarks.ranking`'s two tables of W2 (4 decimals), paired on the seeds."""
  lines = []
  for case, table in result["tables"].items():
    view = dict(table, methods=result["methods"], num_samples=result["num_samples"],
                floor_label="exact samples")
    lines += [f"**{case}**", "", ranking.table_text(view, budgets, "w2", 4), ""]
  return "\n".join(lines)


def main(argv):
  del argv
  budgets = [int(n) for n in FLAGS.nfe]
  result = run(list(FLAGS.methods), budgets, [int(n) for n in FLAGS.tdas_nfe],
               FLAGS.reference_nfe, FLAGS.num_samples, FLAGS.calibration_samples,
               list(FLAGS.mean_blind), FLAGS.config, [int(c) for c in FLAGS.cases],
               FLAGS.batch_size, FLAGS.seeds)
  result["methods"] = list(FLAGS.methods)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  print(table_text(result, budgets))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
