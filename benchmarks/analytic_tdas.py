"""Vanilla vs TDAS on the analytic Gaussian target, exactly measured, across step budgets.

    python -m benchmarks.analytic_tdas --out runs/analytic_tdas.json [--size 32] [--num_samples 256]

For each budget N' and with the exact score and with the high-frequency score error of
SEMANTICS §7, it samples the target with the vanilla PC sampler and with TDAS, and measures the
exact W2 per dimension between the samples' DCT-diagonal Gaussian and the target, and the std ratio
per radial band. TDAS's zoned filter is calibrated per budget as the paper does (a separate
calibration seed): Dev = S(N') / S(full N) from vanilla samples, zones fitted by least squares.
`w2_floor` is the W2 of exact target samples of the same count (the sampling-noise floor).
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

import run_lib
from configs.analytic import ffhq32, ffhq64, lsun256
from models import analytic
from models import utils as model_utils
from tdas import calibration, filters as tdas_filters

CONFIGS = {32: ffhq32, 64: ffhq64, 256: lsun256}

flags.DEFINE_string("out", "analytic_tdas.json", "JSON output; a PNG plot is written beside it.")
flags.DEFINE_enum("size", "32", [str(s) for s in CONFIGS], "Image size of the analytic target.")
flags.DEFINE_integer("num_samples", 256, "Samples per measured run.")
flags.DEFINE_integer("calibration_samples", 128, "Samples per calibration run.")
flags.DEFINE_list("budgets", ["2000", "1000", "400", "200", "100", "50", "25"], "Steps N'.")
flags.DEFINE_integer("bands", 8, "Radial bands of the reported std ratios.")
flags.DEFINE_integer("calibration_bins", 16, "Radial bins of the calibration profile.")
flags.DEFINE_integer("seed", 0, "Seed of the measured runs (calibration uses seed + 1000).")
FLAGS = flags.FLAGS


def _draw(config, model, variables, steps, num, seed, filters=None):
  config.sampling.num_steps = steps
  shape = (num, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = run_lib.build_sampler(config, model, shape)[0]
  x = sampler.sample(jax.random.PRNGKey(seed), variables, filters)
  return np.asarray(x), sampler.nfe


def run(size, num_samples, calibration_samples, budgets, bands, calibration_bins, seed):
  """Returns the JSON-ready result dict (see the module docstring)."""
  config = CONFIGS[size].get_config()
  config.sampling.tdas.transform = "dct"
  variables = analytic.target_variables(config)
  shape = (size, size, config.data.num_channels)
  exact = np.asarray(analytic.sample_target(jax.random.PRNGKey(seed + 7), variables, num_samples))
  w2_floor = analytic.dct_diagonal_w2(exact, variables)
  rows = []
  for score_error in (False, True):
    config.model.score_error = score_error
    model = model_utils.create_model(config)
    full = max(budgets)
    reference, _ = _draw(config, model, variables, full, calibration_samples, seed + 1000)
    s_full = calibration.mean_amplitude(reference)
    for steps in budgets:
      accelerated = reference if steps == full else _draw(
          config, model, variables, steps, calibration_samples, seed + 1000)[0]
      centres, deviation = calibration.radial_profile(
          calibration.mean_amplitude(accelerated) / s_full, calibration_bins)
      fit = calibration.fit_zoned_filter(centres, deviation)
      freq = tdas_filters.frequency_filter(shape, fit["r1"], fit["r2"], fit["lambda1"],
                                           fit["lambda2"])
      for method, filters in (("vanilla", None), ("tdas", dict(space=None, freq=freq))):
        start = time.perf_counter()
        x, nfe = _draw(config, model, variables, steps, num_samples, seed, filters)
        seconds = time.perf_counter() - start
        row = dict(method=method, score_error=score_error, steps=steps, nfe=nfe,
                   w2=analytic.dct_diagonal_w2(x, variables), w2_floor=w2_floor,
                   band_std_ratio=[float(v) for v in analytic.band_std_ratio(x, variables, bands)],
                   seconds=seconds)
        if method == "tdas":
          row["filter"] = {k: fit[k] for k in ("r1", "r2", "lambda1", "lambda2")}
        rows.append(row)
        logging.info("%s", row)
  return dict(size=size, num_samples=num_samples, calibration_samples=calibration_samples,
              device=str(jax.devices()[0].device_kind), rows=rows)


def table(result) -> str:
  """A markdown table of W2 (and the TDAS filter) per budget."""
  lines = ["| score error | N' | NFE | W2 vanilla | W2 TDAS | ratio | TDAS filter (r1, r2, λ1, λ2) |",
           "|---|---|---|---|---|---|---|"]
  rows = result["rows"]
  for vanilla in (r for r in rows if r["method"] == "vanilla"):
    tdas = next(r for r in rows if r["method"] == "tdas" and r["steps"] == vanilla["steps"]
                and r["score_error"] == vanilla["score_error"])
    f = tdas["filter"]
    lines.append(
        f"| {'yes' if vanilla['score_error'] else 'no'} | {vanilla['steps']} | {vanilla['nfe']} | "
        f"{vanilla['w2']:.4f} | {tdas['w2']:.4f} | {vanilla['w2'] / tdas['w2']:.2f} | "
        f"{f['r1']:.2f}, {f['r2']:.2f}, {f['lambda1']:.3f}, {f['lambda2']:.3f} |")
  lines.append(f"\nW2 floor (exact samples, same count): {rows[0]['w2_floor']:.4f}")
  return "\n".join(lines)


def plot(result, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for axis, score_error in zip(axes, (False, True)):
    for method, style in (("vanilla", "o-"), ("tdas", "s-")):
      rows = sorted((r for r in result["rows"] if r["method"] == method
                     and r["score_error"] == score_error), key=lambda r: r["nfe"])
      axis.plot([r["nfe"] for r in rows], [r["w2"] for r in rows], style, label=method)
    axis.axhline(result["rows"][0]["w2_floor"], color="gray", ls="--", label="exact-sample floor")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("NFE")
    axis.set_title(f"{result['size']} px, {'with' if score_error else 'exact'} score error"
                   if score_error else f"{result['size']} px, exact score")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("W2 per dimension")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  result = run(int(FLAGS.size), FLAGS.num_samples, FLAGS.calibration_samples,
               [int(b) for b in FLAGS.budgets], FLAGS.bands, FLAGS.calibration_bins, FLAGS.seed)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.splitext(FLAGS.out)[0] + ".png")
  print(table(result))


if __name__ == "__main__":
  app.run(main)
