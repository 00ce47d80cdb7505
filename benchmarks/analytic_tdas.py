"""Vanilla vs TDAS on the analytic Gaussian target, exactly measured, across step budgets, paired
on seeds.

    python -m benchmarks.analytic_tdas --out runs/analytic_tdas.json [--size 32] [--seeds 3]

For each budget N' and with the exact score and/or the high-frequency score error of
docs/numerics.md §7, it samples the target with the vanilla PC sampler and with TDAS, and measures
the exact W2 per dimension between the samples' DCT-diagonal Gaussian and the target, and the std
ratio per radial band. Every variant draws from the same seeds (a seed fixes the initial noise
and every noise draw), so TDAS − vanilla is paired per seed, with a 95 % t interval and a verdict
(`benchmarks.paired_stats`). `w2_floor` is the W2 of as many exact target samples, one draw per
seed (the sampling-noise floor).

TDAS's filters come from one of two places:
- calibrated here per budget, with the code of `--mode calibrate` (`tdas.stats`,
  `tdas.calibration.calibrate_frequency_filter`, seed 1000 + `--seed`): Dev = S(N') / S(N) from
  vanilla samples at N' and at `--reference_steps` N; every fit in `--fits` (zones by least
  squares, the paper's quantile rule, one gain per radial bin) becomes a variant, all from the
  same two calibration sets;
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
from atomic_io import atomic_write_text
from benchmarks import paired_stats
from configs.analytic import ffhq32, ffhq64, lsun256
from models import analytic
from models import utils as model_utils
from sampling import factory
from tdas import calibration, files as tdas_files, stats as tdas_stats
from tdas.settings import TDAS
from errors import MissingFileError, UserError

CONFIGS = {32: ffhq32, 64: ffhq64, 256: lsun256}
FROM_FILE = "file"  # the fit name of filters read from --calibration_dir


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "analytic_tdas.json", "JSON output; a PNG plot is written beside it.")
  flags.DEFINE_enum("size", "32", [str(s) for s in CONFIGS], "Image size of the analytic target.")
  flags.DEFINE_integer("num_samples", 256, "Samples per measured run (one variant, budget, seed).")
  flags.DEFINE_integer("seeds", 3, "Seeds per budget: every variant draws from the same seeds, "
                       "and TDAS − vanilla is paired on them.")
  flags.DEFINE_integer("calibration_samples", 128, "Samples per calibration run.")
  flags.DEFINE_list("budgets", ["100", "50", "25"], "Steps N' measured.")
  flags.DEFINE_integer("reference_steps", 2000, "N of the calibration reference S(N) (the "
                       "analytic configs' full N).")
  flags.DEFINE_integer("bands", 8, "Radial bands of the reported std ratios.")
  flags.DEFINE_integer("calibration_bins", 16, "Radial bins of the calibration profile.")
  flags.DEFINE_list("fits", ["zones"], f"Filters fitted by the inline calibration, each a TDAS "
                    f"variant (as config.calibrate.method: {', '.join(calibration.METHODS)}); "
                    "the first is the one the main table shows.")
  flags.DEFINE_string("calibration_dir", "", "Take TDAS's filters from filters_<N'>.npz in this "
                      "folder (--mode calibrate output) instead of calibrating inline.")
  flags.DEFINE_list("score_errors", ["off", "on"], "Which analytic models to run: 'off' (exact "
                    "score) and/or 'on' (the high-frequency score error of docs/numerics.md §7).")
  flags.DEFINE_integer("seed", 0, "First seed of the measured runs (calibration uses seed + 1000).")


FLAGS = flags.FLAGS


_SAMPLERS = {}


def _draw(config, model, variables, steps, num, seed, tdas=None):
  """(samples (num, H, W, C), NFE); one compiled sampler per (score error, steps, num), shared by
  the seeds and variants (TDAS's filters are arguments)."""
  key = (bool(config.model.score_error), steps, num, config.data.image_size)
  if key not in _SAMPLERS:
    config.sampling.num_steps = steps
    shape = (num, config.data.image_size, config.data.image_size, config.data.num_channels)
    _SAMPLERS[key] = factory.build(config, shape, model)
  x, nfe = _SAMPLERS[key].sample(jax.random.PRNGKey(seed), variables, tdas)
  return np.asarray(x), nfe


def _filter_summary(fit: dict, method: str) -> dict:
  if method == "radial":
    return dict(radial_gains=[float(g) for g in fit["radial_gains"]])
  return {k: float(fit[method][k]) for k in ("r1", "r2", "lambda1", "lambda2")}


def _calibrated_filters(config, model, variables, budgets, reference_steps, calibration_samples,
                        bins, fits, seed):
  """{N': {fit: (TDAS, filter summary)}} calibrated inline as `--mode calibrate` does (DCT): one
  reference set at `reference_steps` and one set per budget, every fit from the same two."""
  channels = config.data.num_channels

  def amplitude(steps):
    return tdas_stats.mean_amplitude(
        _draw(config, model, variables, steps, calibration_samples, seed)[0], "dct")

  s_full = amplitude(reference_steps)
  out = {}
  for steps in budgets:
    s_steps = s_full if steps == reference_steps else amplitude(steps)
    out[steps] = {}
    for method in fits:
      fit = calibration.calibrate_frequency_filter(s_full, s_steps, channels, "dct", method, bins)
      out[steps][method] = (TDAS.from_arrays(freq=fit["freq"]), _filter_summary(fit, method))
  return out


def _filters_from_files(directory, budgets, shape):
  """{N': {'file': (TDAS, filter summary)}} from `--mode calibrate`'s filters_<N'>.npz files."""
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
    out[steps] = {FROM_FILE: (TDAS.from_arrays(space=None if np.all(space == 1) else space,
                                               freq=freq), summary)}
  return out


def run(size, num_samples, calibration_samples, budgets, bands, calibration_bins, seed,
        fits=("zones",), calibration_dir="", score_errors=(False, True), seeds=1,
        reference_steps=2000):
  """Returns the JSON-ready result: rows {score_error, variant ('vanilla' or 'tdas'), fit (the
  TDAS filter's fit, None for vanilla), steps, nfe, seed, num_samples, w2, w2_floor,
  band_std_ratio, seconds}, one per sample set, and `tables`, the paired comparisons."""
  config = CONFIGS[size].get_config()
  config.sampling.tdas.transform = "dct"
  variables = analytic.target_variables(config)
  shape = (size, size, config.data.num_channels)
  run_seeds = [seed + k for k in range(seeds)]
  floors = {s: analytic.dct_diagonal_w2(np.asarray(analytic.sample_target(
      jax.random.fold_in(jax.random.PRNGKey(7), s), variables, num_samples)), variables)
            for s in run_seeds}
  rows, filters = [], {}
  for score_error in score_errors:
    config.model.score_error = score_error
    model = model_utils.create_model(config)
    if calibration_dir:
      calibrated = _filters_from_files(calibration_dir, budgets, shape)
    else:
      calibrated = _calibrated_filters(config, model, variables, budgets, reference_steps,
                                       calibration_samples, calibration_bins, fits, seed + 1000)
    for steps in budgets:
      variants = [("vanilla", None, None)] + [("tdas", fit, tdas) for fit, (tdas, _) in
                                              calibrated[steps].items()]
      filters[f"{int(score_error)}/{steps}"] = {fit: summary for fit, (_, summary) in
                                                calibrated[steps].items()}
      for variant, fit, tdas in variants:
        for s in run_seeds:
          start = time.perf_counter()
          x, nfe = _draw(config, model, variables, steps, num_samples, s, tdas)
          row = dict(variant=variant, fit=fit, score_error=score_error, steps=steps, nfe=nfe,
                     seed=s, num_samples=num_samples, w2=analytic.dct_diagonal_w2(x, variables),
                     w2_floor=floors[s], seconds=time.perf_counter() - start,
                     band_std_ratio=[float(v) for v in
                                     analytic.band_std_ratio(x, variables, bands)])
          rows.append(row)
          logging.info("%s", {k: v for k, v in row.items() if k != "band_std_ratio"})
  return dict(size=size, num_samples=num_samples, seeds=run_seeds,
              reference_steps=None if calibration_dir else reference_steps,
              calibration_samples=None if calibration_dir else calibration_samples,
              calibration=os.path.abspath(calibration_dir) if calibration_dir else
              f"inline ({', '.join(fits)})", filters=filters,
              device=str(jax.devices()[0].device_kind), rows=rows, tables=tables(rows))


def _per_seed(rows, score_error, steps, fit, field="w2") -> dict:
  return {r["seed"]: r[field] for r in rows if r["score_error"] == score_error
          and r["steps"] == steps and r["fit"] == fit}


def tables(rows) -> list:
  """Per (score error, N', TDAS fit): vanilla's and TDAS's W2 over seeds, TDAS − vanilla paired
  per seed, the share of vanilla's excess over the floor that TDAS removes, (v − t) / (v − floor)
  per seed, and, for every fit after the first, that fit − the first fit, paired."""
  found = []
  fits = list(dict.fromkeys(r["fit"] for r in rows if r["variant"] == "tdas"))
  for score_error in sorted({r["score_error"] for r in rows}):
    for steps in sorted({r["steps"] for r in rows}, reverse=True):
      vanilla = _per_seed(rows, score_error, steps, None)
      if not vanilla:
        continue
      floor = _per_seed(rows, score_error, steps, None, "w2_floor")
      nfe = next(r["nfe"] for r in rows if r["steps"] == steps)
      for fit in fits:
        tdas = _per_seed(rows, score_error, steps, fit)
        if not tdas:
          continue
        seeds = sorted(set(tdas) & set(vanilla))
        entry = dict(score_error=score_error, steps=steps, nfe=nfe, fit=fit, seeds=seeds)
        for name, values in (("vanilla", vanilla), ("tdas", tdas), ("floor", floor)):
          entry[name] = paired_stats.t_interval([values[s] for s in seeds]).to_json()
        difference = paired_stats.paired_difference(tdas, vanilla)
        entry["tdas_minus_vanilla"] = dict(difference.to_json(),
                                           verdict=paired_stats.verdict(difference))
        entry["excess_removed"] = paired_stats.t_interval(
            [(vanilla[s] - tdas[s]) / (vanilla[s] - floor[s]) for s in seeds]).to_json()
        if fit != fits[0]:
          first = _per_seed(rows, score_error, steps, fits[0])
          against = paired_stats.paired_difference(tdas, first)
          entry["minus_" + str(fits[0])] = dict(against.to_json(),
                                                verdict=paired_stats.verdict(against))
        found.append(entry)
  return found


def _value(cell: dict, digits: int) -> str:
  """'mean ± half width' of an interval's JSON."""
  return paired_stats.format_value(paired_stats.Interval.from_json(cell), digits)


def _filter_text(summary: dict) -> str:
  if "radial_gains" in summary:
    gains = summary["radial_gains"]
    return f"radial, {len(gains)} gains {min(gains):.3f}–{max(gains):.3f}"
  return (f"{summary['r1']:.2f}, {summary['r2']:.2f}, {summary['lambda1']:.3f}, "
          f"{summary['lambda2']:.3f}")


def table(result) -> str:
  """Markdown: per score error and budget, W2 of vanilla and TDAS (mean ± the 95 % interval's
  half width over seeds), TDAS − vanilla paired with its verdict, the share of the excess over
  the floor removed, and the first fit's filter; then, with several fits, each fit against the
  first."""
  entries = result["tables"]
  fits = list(dict.fromkeys(e["fit"] for e in entries))
  main = ["| score error | N′ | NFE | W2 vanilla | W2 TDAS | TDAS − vanilla, paired | share of "
          "vanilla's excess removed | filter (r1, r2, λ1, λ2) |",
          "|---|---:|---:|---:|---:|---|---:|---|"]
  for e in (e for e in entries if e["fit"] == fits[0]):
    summary = result["filters"][f"{int(e['score_error'])}/{e['steps']}"][fits[0]]
    main.append(
        f"| {'yes' if e['score_error'] else 'no'} | {e['steps']} | {e['nfe']} | "
        f"{_value(e['vanilla'], 4)} | {_value(e['tdas'], 4)} | "
        f"{paired_stats.verdict_text(e['tdas_minus_vanilla'], 4)} | "
        f"{_value(e['excess_removed'], 2)} | {_filter_text(summary)} |")
  floors = {}
  for e in entries:
    floors.setdefault(e["score_error"], e["floor"])
  floor = next(iter(floors.values()))
  main.append(f"\nW2 floor ({result['num_samples']} exact samples per seed): "
              f"{_value(floor, 4)}")
  text = "\n".join(main)
  if len(fits) > 1:
    others = ["| score error | N′ | fit | W2 TDAS | − vanilla, paired | − " + str(fits[0]) +
              ", paired |", "|---|---:|---|---:|---|---|"]
    for e in entries:
      against = e.get("minus_" + str(fits[0]))
      others.append(
          f"| {'yes' if e['score_error'] else 'no'} | {e['steps']} | `{e['fit']}` | "
          f"{_value(e['tdas'], 4)} | {paired_stats.verdict_text(e['tdas_minus_vanilla'], 4)} | "
          f"{paired_stats.verdict_text(against, 4) if against else ''} |")
    text += "\n\n" + "\n".join(others)
  return text


def plot(result, path):
  """W2 against NFE per score error: vanilla and each TDAS fit with 95 % intervals, and the floor."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  entries = result["tables"]
  score_errors = sorted({e["score_error"] for e in entries})
  fig, axes = plt.subplots(1, len(score_errors), figsize=(5.5 * len(score_errors), 4.2),
                           sharey=True, squeeze=False)
  axes = axes[0]
  fits = list(dict.fromkeys(e["fit"] for e in entries))
  for axis, score_error in zip(axes, score_errors):
    chosen = sorted((e for e in entries if e["score_error"] == score_error),
                    key=lambda e: e["nfe"])
    lines = [("vanilla", "o-", [e for e in chosen if e["fit"] == fits[0]], "vanilla")]
    lines += [(f"TDAS ({fit})", "s-", [e for e in chosen if e["fit"] == fit], "tdas")
              for fit in fits]
    for label, style, points, side in lines:
      means = np.array([e[side]["mean"] for e in points])
      half = np.array([0.0 if e[side]["high"] is None else e[side]["high"] - e[side]["mean"]
                       for e in points])
      axis.errorbar([e["nfe"] for e in points], means, yerr=half, fmt=style, capsize=3,
                    label=label)
    axis.axhline(chosen[0]["floor"]["mean"], color="gray", ls="--", label="exact-sample floor")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("NFE")
    axis.set_title(f"{result['size']} px, {'with the' if score_error else 'exact'} score"
                   f"{' error' if score_error else ''}")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("W2 per dimension (bars: 95 % intervals over seeds)")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  choices = {"off": False, "on": True}
  unknown = [v for v in FLAGS.score_errors if v not in choices]
  if unknown:
    raise UserError(f"--score_errors takes 'off' and/or 'on', got {unknown}.")
  unknown = [fit for fit in FLAGS.fits if fit not in calibration.METHODS]
  if unknown or not FLAGS.fits:
    raise UserError(f"--fits takes one or more of {', '.join(calibration.METHODS)}, got "
                    f"{list(FLAGS.fits)}.")
  result = run(int(FLAGS.size), FLAGS.num_samples, FLAGS.calibration_samples,
               [int(b) for b in FLAGS.budgets], FLAGS.bands, FLAGS.calibration_bins, FLAGS.seed,
               tuple(FLAGS.fits), FLAGS.calibration_dir,
               tuple(choices[v] for v in FLAGS.score_errors), FLAGS.seeds,
               FLAGS.reference_steps)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  plot(result, os.path.splitext(FLAGS.out)[0] + ".png")
  print(table(result))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
