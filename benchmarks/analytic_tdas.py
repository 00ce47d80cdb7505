"""Vanilla vs TDAS on the analytic Gaussian target, exactly measured, across step budgets.

    python -m benchmarks.analytic_tdas --out runs/analytic_tdas.json [--size 32] [--num_samples 256]

For each budget N' and with the exact score and with the high-frequency score error of
docs/numerics.md §7, it samples the target with the vanilla PC sampler and with TDAS, and measures the
exact W2 per dimension between the samples' DCT-diagonal Gaussian and the target, and the std ratio
per radial band. `w2_floor` is the W2 of exact target samples of the same count (the
sampling-noise floor).

TDAS's filters come from one of two places:
- calibrated here per budget, with the code of `--mode calibrate` (`tdas.stats`,
  `tdas.calibration.calibrate_frequency_filter`, a separate calibration seed): Dev = S(N') / S(N)
  from vanilla samples, the filter of `--method` (zones by least squares by default);
- or read from `--mode calibrate` output: `--calibration_dir W/calibration` takes
  `filters_<N'>.npz` for each budget. Those files were calibrated for one config (with or without
  the score error), so pass the matching `--score_errors`, e.g.

    python main.py --config configs/analytic/ffhq64.py --workdir runs/cal64 --mode calibrate \
        --config.model.score_error=True --config.calibrate.steps=50
    python -m benchmarks.analytic_tdas --size 64 --budgets 100,50 --score_errors on \
        --calibration_dir runs/cal64/calibration --out runs/analytic_tdas_calibrated_64.json
"""
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

import errors
from configs.analytic import ffhq32, ffhq64, lsun256
from models import analytic
from models import utils as model_utils
from sampling import factory
from tdas import calibration, files as tdas_files, stats as tdas_stats
from tdas.settings import TDAS
from errors import MissingFileError, UserError

CONFIGS = {32: ffhq32, 64: ffhq64, 256: lsun256}


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "analytic_tdas.json", "JSON output; a PNG plot is written beside it.")
  flags.DEFINE_enum("size", "32", [str(s) for s in CONFIGS], "Image size of the analytic target.")
  flags.DEFINE_integer("num_samples", 256, "Samples per measured run.")
  flags.DEFINE_integer("calibration_samples", 128, "Samples per calibration run.")
  flags.DEFINE_list("budgets", ["2000", "1000", "400", "200", "100", "50", "25"], "Steps N'.")
  flags.DEFINE_integer("bands", 8, "Radial bands of the reported std ratios.")
  flags.DEFINE_integer("calibration_bins", 16, "Radial bins of the calibration profile.")
  flags.DEFINE_enum("method", "zones", list(calibration.METHODS),
                    "Filter fitted by the inline calibration (as config.calibrate.method).")
  flags.DEFINE_string("calibration_dir", "", "Take TDAS's filters from filters_<N'>.npz in this "
                      "folder (--mode calibrate output) instead of calibrating inline.")
  flags.DEFINE_list("score_errors", ["off", "on"], "Which analytic models to run: 'off' (exact "
                    "score) and/or 'on' (the high-frequency score error of docs/numerics.md §7).")
  flags.DEFINE_integer("seed", 0, "Seed of the measured runs (calibration uses seed + 1000).")


FLAGS = flags.FLAGS


def _draw(config, model, variables, steps, num, seed, tdas=None):
  config.sampling.num_steps = steps
  shape = (num, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = factory.build(config, shape, model)
  x, nfe = sampler.sample(jax.random.PRNGKey(seed), variables, tdas)
  return np.asarray(x), nfe


def _calibrated_filters(config, model, variables, budgets, calibration_samples, bins, method,
                        seed):
  """{N': (TDAS, filter summary)} calibrated inline as `--mode calibrate` does (DCT)."""
  full = max(budgets)
  channels = config.data.num_channels

  def amplitude(steps):
    return tdas_stats.mean_amplitude(
        _draw(config, model, variables, steps, calibration_samples, seed)[0], "dct")

  s_full = amplitude(full)
  out = {}
  for steps in budgets:
    s_steps = s_full if steps == full else amplitude(steps)
    fit = calibration.calibrate_frequency_filter(s_full, s_steps, channels, "dct", method, bins)
    summary = (dict(radial_gains=[float(g) for g in fit["radial_gains"]]) if method == "radial"
               else {k: fit[method][k] for k in ("r1", "r2", "lambda1", "lambda2")})
    out[steps] = (TDAS.from_arrays(freq=fit["freq"]), summary)
  return out


def _filters_from_files(directory, budgets, shape):
  """{N': (TDAS, filter summary)} from `--mode calibrate`'s filters_<N'>.npz files."""
  paths = {steps: os.path.join(directory, f"filters_{steps}.npz") for steps in budgets}
  missing = [p for p in paths.values() if not os.path.isfile(p)]
  if missing:
    raise MissingFileError(f"--calibration_dir lacks {missing}; run --mode calibrate with "
                            "config.calibrate.steps set to each budget first.")
  out = {}
  for steps, path in paths.items():
    space, freq, info = tdas_files.load_filters(path, shape)
    if info.get("transform", "dct") != "dct":
      raise UserError(f"{path} holds a {info['transform']} filter; this benchmark runs DCT TDAS.")
    method = info.get("method", "zones")
    summary = (dict(radial_gains=info.get("radial_gains")) if method == "radial"
               else {k: info[method][k] for k in ("r1", "r2", "lambda1", "lambda2")})
    summary.update(file=os.path.abspath(path), method=method,
                   calibration_samples=info.get("num_samples"), full_steps=info.get("full_steps"))
    # An all-ones space filter (no space_file at calibration) is the vanilla space: skip it.
    out[steps] = (TDAS.from_arrays(space=None if np.all(space == 1) else space, freq=freq),
                  summary)
  return out


def run(size, num_samples, calibration_samples, budgets, bands, calibration_bins, seed,
        method="zones", calibration_dir="", score_errors=(False, True)):
  """Returns the JSON-ready result dict (see the module docstring)."""
  config = CONFIGS[size].get_config()
  config.sampling.tdas.transform = "dct"
  variables = analytic.target_variables(config)
  shape = (size, size, config.data.num_channels)
  exact = np.asarray(analytic.sample_target(jax.random.PRNGKey(seed + 7), variables, num_samples))
  w2_floor = analytic.dct_diagonal_w2(exact, variables)
  rows = []
  for score_error in score_errors:
    config.model.score_error = score_error
    model = model_utils.create_model(config)
    if calibration_dir:
      calibrated = _filters_from_files(calibration_dir, budgets, shape)
    else:
      calibrated = _calibrated_filters(config, model, variables, budgets, calibration_samples,
                                       calibration_bins, method, seed + 1000)
    for steps in budgets:
      calibrated_tdas, filter_summary = calibrated[steps]
      for name, tdas in (("vanilla", None), ("tdas", calibrated_tdas)):
        start = time.perf_counter()
        x, nfe = _draw(config, model, variables, steps, num_samples, seed, tdas)
        seconds = time.perf_counter() - start
        row = dict(method=name, score_error=score_error, steps=steps, nfe=nfe,
                   w2=analytic.dct_diagonal_w2(x, variables), w2_floor=w2_floor,
                   band_std_ratio=[float(v) for v in analytic.band_std_ratio(x, variables, bands)],
                   seconds=seconds)
        if name == "tdas":
          row["filter"] = filter_summary
        rows.append(row)
        logging.info("%s", row)
  return dict(size=size, num_samples=num_samples,
              calibration_samples=None if calibration_dir else calibration_samples,
              calibration=os.path.abspath(calibration_dir) if calibration_dir else
              f"inline ({method})", device=str(jax.devices()[0].device_kind), rows=rows)


def table(result) -> str:
  """A markdown table of W2 (and the TDAS filter) per budget."""
  lines = ["| score error | N' | NFE | W2 vanilla | W2 TDAS | ratio | TDAS filter (r1, r2, λ1, λ2) |",
           "|---|---|---|---|---|---|---|"]
  rows = result["rows"]
  for vanilla in (r for r in rows if r["method"] == "vanilla"):
    tdas = next(r for r in rows if r["method"] == "tdas" and r["steps"] == vanilla["steps"]
                and r["score_error"] == vanilla["score_error"])
    f = tdas["filter"]
    described = (f"radial, {len(f['radial_gains'])} gains {min(f['radial_gains']):.3f}-"
                 f"{max(f['radial_gains']):.3f}" if "radial_gains" in f else
                 f"{f['r1']:.2f}, {f['r2']:.2f}, {f['lambda1']:.3f}, {f['lambda2']:.3f}")
    lines.append(
        f"| {'yes' if vanilla['score_error'] else 'no'} | {vanilla['steps']} | {vanilla['nfe']} | "
        f"{vanilla['w2']:.4f} | {tdas['w2']:.4f} | {vanilla['w2'] / tdas['w2']:.2f} | "
        f"{described} |")
  lines.append(f"\nW2 floor (exact samples, same count): {rows[0]['w2_floor']:.4f}")
  return "\n".join(lines)


def plot(result, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  score_errors = sorted({r["score_error"] for r in result["rows"]})
  fig, axes = plt.subplots(1, len(score_errors), figsize=(5.5 * len(score_errors), 4.2),
                           sharey=True, squeeze=False)
  axes = axes[0]
  for axis, score_error in zip(axes, score_errors):
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
  choices = {"off": False, "on": True}
  unknown = [v for v in FLAGS.score_errors if v not in choices]
  if unknown:
    raise app.UsageError(f"--score_errors takes 'off' and/or 'on', got {unknown}.")
  result = run(int(FLAGS.size), FLAGS.num_samples, FLAGS.calibration_samples,
               [int(b) for b in FLAGS.budgets], FLAGS.bands, FLAGS.calibration_bins, FLAGS.seed,
               FLAGS.method, FLAGS.calibration_dir,
               tuple(choices[v] for v in FLAGS.score_errors))
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.splitext(FLAGS.out)[0] + ".png")
  print(table(result))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
