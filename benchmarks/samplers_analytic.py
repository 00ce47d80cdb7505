"""Every sampler at equal NFE on the analytic Gaussian (exact W2), vanilla and with TDAS calibrated
for that sampler and budget.

    python -m benchmarks.samplers_analytic --out benchmarks/results/samplers_analytic.json

The target is `configs/analytic/ffhq64.py`'s Gaussian (64 px, VE σ_max = 100), with its FFHQ-like
mean (0.52, 0.43, 0.38) and with mean 0, with and without the score error of SEMANTICS §7 (a
model that under-corrects high frequencies at low noise, as the TDAS paper measured for NCSN++).
For each case, method and NFE budget it draws `--num_samples` samples and reports the
per-dimension W2 to the target (`models.analytic.dct_diagonal_w2`; its floor is that of as many
exact samples). At the `--tdas_nfe` budgets TDAS is calibrated as `--mode calibrate` does, from
the method's own samples: Dev = S(budget) / S(reference) with the reference at `--reference_nfe`
(PC: the config's 2000 steps), zones fitted by least squares; then the method samples again with
that filter. Writes JSON and prints the README's table.
"""
import json
import os

from absl import app, flags, logging
import jax
import numpy as np

from atomic_io import atomic_write_text
from benchmarks.sampler_budgets import LABELS, METHODS, configure, steps_for
from configs.analytic import ffhq64
from models import analytic
from sampling import factory
from tdas import calibration
from tdas import stats as tdas_stats
from tdas.settings import TDAS

flags.DEFINE_string("out", "samplers_analytic.json", "JSON output.")
flags.DEFINE_list("methods", list(METHODS), "Methods to rank.")
flags.DEFINE_list("nfe", ["10", "20", "40", "80"], "NFE budgets.")
flags.DEFINE_list("tdas_nfe", ["20"], "Budgets at which each method is also run with TDAS.")
flags.DEFINE_integer("reference_nfe", 400, "NFE of the calibration reference (not PC, which takes "
                     "the config's full 2000 steps).")
flags.DEFINE_integer("num_samples", 1000, "Samples per point.")
flags.DEFINE_integer("calibration_samples", 256, "Samples per calibration set.")
flags.DEFINE_list("mean_blind", ["pc"], "Methods run on the mean-0.5 targets only: at σ_max = 100 "
                  "VE PC's W2 moves by < 1e-5 with the target's mean (measured), so their mean-0 "
                  "rows would repeat the others.")
FLAGS = flags.FLAGS

CASES = (("mean 0.5, exact score", False, True), ("mean 0.5, score error", True, True),
         ("mean 0, exact score", False, False), ("mean 0, score error", True, False))


def case_config(score_error: bool, with_mean: bool):
  config = ffhq64.get_config()
  config.model.score_error = score_error
  if not with_mean:
    config.model.target_mean, config.model.target_mean_radial = (0.0, 0.0, 0.0), 0.0
  config.sampling.tdas.enabled = False
  return config


_SAMPLERS = {}


def draw(config, method, steps, num, seed, tdas=None):
  """(samples, NFE); one compiled sampler per (method, steps, score error, batch), shared by the
  targets (the target is an argument: its mean and variances are the model's variables)."""
  key = (method, steps, bool(config.model.score_error), num)
  if key not in _SAMPLERS:
    _SAMPLERS[key] = factory.build(configure(config, method, steps), (num, 64, 64, 3))
  x, nfe = _SAMPLERS[key].sample(jax.random.PRNGKey(seed), analytic.target_variables(config),
                                 tdas)
  return np.asarray(x), int(nfe)


def run(methods, budgets, tdas_budgets, reference_nfe, num_samples, calibration_samples,
        mean_blind=()):
  rows = []
  for case, score_error, with_mean in CASES:
    config = case_config(score_error, with_mean)
    variables = analytic.target_variables(config)
    floor = analytic.dct_diagonal_w2(np.asarray(analytic.sample_target(
        jax.random.PRNGKey(99), variables, num_samples)), variables)
    for method in methods:
      if method in mean_blind and not with_mean:
        continue
      reference = None
      for nfe_budget in budgets:
        steps = steps_for(method, nfe_budget)
        x, nfe = draw(config, method, steps, num_samples, 0)
        row = dict(case=case, method=method, steps=steps, nfe=nfe, w2_floor=floor,
                   w2=analytic.dct_diagonal_w2(x, variables))
        if nfe_budget in tdas_budgets:
          if reference is None:
            full = 2000 if method == "pc" else steps_for(method, reference_nfe)
            reference = tdas_stats.mean_amplitude(
                draw(config, method, full, calibration_samples, 1000)[0], "dct")
          accelerated = tdas_stats.mean_amplitude(
              draw(config, method, steps, calibration_samples, 1000)[0], "dct")
          fit = calibration.calibrate_frequency_filter(reference, accelerated, 3, "dct",
                                                       "zones", 16)
          x_tdas, _ = draw(config, method, steps, num_samples, 0, TDAS.from_arrays(
              freq=fit["freq"]))
          row.update(w2_tdas=analytic.dct_diagonal_w2(x_tdas, variables),
                     filter={k: fit["zones"][k] for k in ("r1", "r2", "lambda1", "lambda2")})
        rows.append(row)
        logging.info("%s", row)
        print(row, flush=True)
  return dict(config="configs/analytic/ffhq64.py", num_samples=num_samples,
              mean_blind=list(mean_blind),
              calibration_samples=calibration_samples, reference_nfe=reference_nfe,
              device=str(jax.devices()[0].device_kind), rows=rows)


def table_text(result, budgets) -> str:
  """W2 per method (rows) and NFE (columns), per case; TDAS in brackets where it was run."""
  lines = []
  for case, _, _ in CASES:
    rows = [r for r in result["rows"] if r["case"] == case]
    lines += [f"**{case}** (floor {rows[0]['w2_floor']:.4f})", "",
              "| sampler | " + " | ".join(f"NFE ≈ {b}" for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    for method in result["methods"] if "methods" in result else METHODS:
      cells = []
      for budget in budgets:
        found = [r for r in rows if r["method"] == method
                 and min(budgets, key=lambda b: abs(b - r["nfe"])) == budget]
        if not found:
          cells.append("")
          continue
        r = found[0]
        cells.append(f"{r['w2']:.4f}" + (f" (TDAS {r['w2_tdas']:.4f})" if "w2_tdas" in r else ""))
      lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  budgets = [int(n) for n in FLAGS.nfe]
  result = run(list(FLAGS.methods), budgets, [int(n) for n in FLAGS.tdas_nfe],
               FLAGS.reference_nfe, FLAGS.num_samples, FLAGS.calibration_samples,
               list(FLAGS.mean_blind))
  result["methods"] = list(FLAGS.methods)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  print(table_text(result, budgets))


if __name__ == "__main__":
  app.run(main)
