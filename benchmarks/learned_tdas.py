"""Vanilla vs TDAS with a learned score model: the shipped digits NCSN++, across step budgets.

    python -m benchmarks.learned_tdas --out benchmarks/results/learned_tdas.json

For each budget N' = N / k (N = model.num_scales = 200 of `configs/demo/digits_ncsnpp.py`,
k in --speedups), it
1. calibrates TDAS's frequency filter with `--mode calibrate`'s own code (`run_lib.calibrate`,
   separate seed, vanilla samples at N and at N');
2. samples --num_samples images per seed with three samplers on the same PRNG draws: `vanilla`,
   `tdas` (the calibrated filter file: zones fitted by least squares) and `tdas_one_zone` (the
   paper's one-zone rule from the same calibration, r1 = r2 = r, lambda1 = lambda2 = lambda);
3. measures, against the 300 held-out digits, the Fréchet distance in the features of the
   project's digits classifier (`evaluation.digits_classifier`), the classifier's label entropy,
   the frequency deviation (mean |ln Dev| over radial DCT bands), NFE and sampling seconds
   (compilation excluded).

By default TDAS here is the frequency filter alone. `--space_alpha A` (A >= 1) adds the space
filter made from the training digits' mean image (sqrt map, softened by A). The digits' border is
black in every image, so at A = 1 that filter is 0 there and the sampler never puts noise on it.

At N' = N the calibrated frequency filter is the identity by construction (Dev = 1), so there
both TDAS variants are vanilla (or the space filter alone): they are sampled once and reported
under each name.

Writes FILE.json, FILE.png (distance and frequency deviation vs NFE) and FILE_grids.png (the
first 16 samples of seed 0 per budget and method), plus the calibration outputs in --workdir.
"""
import json
import os
import time

from absl import app, flags, logging
import jax
import numpy as np

import errors
import checkpoints
import run_lib
from atomic_io import atomic_savez, atomic_write_text
from benchmarks import paired_stats
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier, metrics
from images import image_grid, to_data_scale, to_uint8
from models import utils as model_utils
from sampling import devices, factory
from tdas import settings as tdas_settings
from tdas import stats as tdas_stats
from errors import UserError

METHODS = ("vanilla", "tdas", "tdas_one_zone")
LABELS = {"vanilla": "vanilla", "tdas": "TDAS (calibrated zones)",
          "tdas_one_zone": "TDAS (one-zone rule)"}


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "learned_tdas.json",
                      "JSON output; FILE.png and FILE_grids.png beside.")
  flags.DEFINE_string("workdir", "runs/learned_tdas", "Where calibration and statistics files go.")
  flags.DEFINE_list("speedups", ["1", "2", "5", "10", "20", "40"], "k of the budgets N' = N / k.")
  flags.DEFINE_integer("num_samples", 250, "Samples per method, budget and seed.")
  flags.DEFINE_integer("seeds", 3, "Seeds per method and budget (the spread of the measures).")
  flags.DEFINE_integer("calibration_samples", 200, "Samples per calibration set (the paper: 200).")
  flags.DEFINE_integer("bins", 8, "Radial DCT bands of the frequency deviation.")
  flags.DEFINE_float("space_alpha", 0.0, "0: frequency filter only. >= 1: also TDAS's space filter "
                     "from the training digits' mean image, softened by this alpha.")


FLAGS = flags.FLAGS


def budgets_of(full: int, speedups) -> list:
  """N' = N / k for each k, each a whole number of steps."""
  budgets = []
  for k in speedups:
    if full % int(k):
      raise UserError(f"--speedups {k}: N = {full} is not a multiple of it.")
    budgets.append(full // int(k))
  return budgets


def space_file(workdir: str) -> str:
  """Writes the training digits' mean image (the space filter's input) and returns its path."""
  images, _ = digits_classifier.digits_split(evaluation=False)
  path = os.path.join(workdir, "space_digits_16.npz")
  atomic_savez(path, mean=images.astype(np.float64).mean(axis=0))
  return path


def calibrate(config, workdir: str, steps: int, num_samples: int) -> dict:
  """`--mode calibrate` at N' = steps; returns its summary (filter file, fits)."""
  config = config.copy_and_resolve_references()
  config.calibrate.steps = steps
  config.calibrate.num_samples = num_samples
  config.calibrate.batch_size = num_samples
  config.calibrate.seed = 1000  # never one of the measured seeds
  return run_lib.calibrate(config, workdir)


def method_config(config, method: str, steps: int, calibration: dict = None):
  """The config of one sampler: vanilla, or TDAS with the calibrated file or the one-zone fit."""
  config = config.copy_and_resolve_references()
  config.sampling.num_steps = steps
  tdas = config.sampling.tdas
  tdas.enabled = method != "vanilla"
  if method == "tdas" and calibration is not None:
    tdas.filter_file = calibration["filter_file"]
  elif method == "tdas_one_zone" and calibration is not None:
    zone = calibration["fits"]["one_zone"]
    tdas.r1 = tdas.r2 = float(zone["r"])
    tdas.lambda1 = tdas.lambda2 = float(zone["lambda"])
  return config


class Measure:
  """Quality measures of a sample set against the held-out digits."""

  def __init__(self, classifier_variables, bins: int):
    self.quality = digits_classifier.DigitsQuality(classifier_variables)
    held_out, _ = digits_classifier.digits_split(evaluation=True)
    self.data_amplitude = tdas_stats.mean_amplitude(held_out, "dct")
    self.bins = bins

  def __call__(self, images) -> dict:
    """images (N, 16, 16, 1) in [0, 1] (unclipped; the classifier clips)."""
    result = self.quality(images)
    deviation = metrics.radial_deviation(tdas_stats.mean_amplitude(images, "dct"),
                                         self.data_amplitude, self.bins, "dct")
    result["frequency_deviation"] = deviation["mean_abs_log_deviation"]
    result["band_deviation"] = deviation["deviation"]
    return result


def compile_sampler(sampler, variables, tdas) -> None:
  """Compiles (and runs once, on one chunk) the sampler's programs for these TDAS settings, so
  that `draw`'s seconds are sampling alone."""
  state = sampler.init(jax.random.PRNGKey(0), tdas)
  jax.block_until_ready(sampler.finish(sampler.advance(state, variables, 0,
                                                       num=sampler.chunk_size())))


def draw(sampler, variables, tdas, num_steps: int, seed: int):
  """One timed sample set: (images (N, H, W, C) in model space, NFE, seconds)."""
  rng = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  x, nfe = factory.run(sampler, rng, variables, tdas,
                       progress_label=f"{num_steps} steps, seed {seed}",
                       what=f"{num_steps} steps, seed {seed}")
  return x, nfe, time.perf_counter() - start


def speedup_at_equal_distance(budgets, distances, target) -> float:
  """N / N'* where N'* is the fewest steps whose distance stays <= target at every budget above
  it, interpolated linearly in (log N', distance) between the budgets around the crossing; NaN
  when even the largest budget misses the target.

  Args:
    budgets: (K,) decreasing step counts, budgets[0] = N.
    distances: (K,) the method's distance at each budget.
    target: the distance to match (vanilla's at N).
  """
  budgets, distances = np.asarray(budgets, np.float64), np.asarray(distances, np.float64)
  if distances[0] > target:
    return float("nan")
  last = 0
  while last + 1 < len(budgets) and distances[last + 1] <= target:
    last += 1
  if last + 1 == len(budgets):
    return float(budgets[0] / budgets[last])
  # Between budgets[last] (<= target) and budgets[last + 1] (> target).
  fraction = (target - distances[last]) / (distances[last + 1] - distances[last])
  log_steps = np.log(budgets[last]) + fraction * (np.log(budgets[last + 1]) - np.log(budgets[last]))
  return float(budgets[0] / np.exp(log_steps))


def summarise(rows, budgets) -> dict:
  """Means and standard deviations over seeds per (method, budget), and the speed-up factors."""
  seeds = sorted({r["seed"] for r in rows})
  table = []
  for method in METHODS:
    for steps in budgets:
      chosen = [r for r in rows if r["method"] == method and r["steps"] == steps]
      entry = dict(method=method, steps=steps, nfe=chosen[0]["nfe"], seeds=len(chosen))
      for field in ("frechet_distance", "frequency_deviation", "label_entropy",
                    "mean_image_entropy", "seconds"):
        values = np.array([r[field] for r in chosen], np.float64)
        entry[field] = float(values.mean())
        entry[field + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
      table.append(entry)
  distance = {(r["method"], r["steps"], r["seed"]): r["frechet_distance"] for r in rows}
  factors = {}
  for method in METHODS:
    per_seed = [speedup_at_equal_distance(budgets, [distance[method, s, seed] for s in budgets],
                                          distance["vanilla", budgets[0], seed])
                for seed in seeds]
    finite = np.array([f for f in per_seed if np.isfinite(f)])
    factors[method] = dict(
        per_seed=[None if not np.isfinite(f) else f for f in per_seed],
        mean=float(finite.mean()) if finite.size else None,
        std=float(finite.std(ddof=1)) if finite.size > 1 else None,
        matched_seeds=int(finite.size))
  return dict(table=table, speedup_at_equal_distance=factors)


def real_floor(measure: Measure, num_samples: int, seeds: int) -> dict:
  """The measures of real training digits (num_samples drawn per seed) against the held-out
  ones: the finite-sample floor of the Fréchet distance."""
  train, _ = digits_classifier.digits_split(evaluation=False)
  values = []
  for seed in range(seeds):
    chosen = np.random.RandomState(seed).choice(train.shape[0], num_samples, replace=False)
    values.append(measure(train[chosen])["frechet_distance"])
  return dict(frechet_distance=float(np.mean(values)), frechet_distance_std=float(np.std(
      values, ddof=1)) if seeds > 1 else 0.0, num_samples=num_samples, seeds=seeds)


def run(workdir: str, speedups, num_samples: int, seeds: int, calibration_samples: int,
        bins: int, grid_path: str = None, space_alpha: float = 0.0) -> dict:
  config = digits_ncsnpp.get_config()
  tdas = config.sampling.tdas
  tdas.use_space = space_alpha > 0
  if tdas.use_space:
    tdas.space_file, tdas.space_alpha = space_file(workdir), float(space_alpha)
  config.sampling.vanilla_comparison = False
  devices.set_matmul_precision(config)
  model = model_utils.create_model(config)
  variables, source = checkpoints.load_variables(config, workdir)
  measure = Measure(digits_classifier.load_classifier(), bins)
  full = int(config.model.num_scales)
  budgets = budgets_of(full, speedups)

  rows, calibrations, previews = [], {}, {}
  for steps in budgets:
    calibration = None
    if steps < full:
      calibration = calibrate(config, workdir, steps, calibration_samples)
      calibrations[steps] = dict(filter_file=calibration["filter_file"],
                                 zones=calibration["fits"]["zones"],
                                 one_zone=calibration["fits"]["one_zone"],
                                 sampling_seconds=calibration["sampling_seconds"])
    # One sampler per budget: the methods differ only in the filters passed to it.
    shape = (num_samples, config.data.image_size, config.data.image_size,
             config.data.num_channels)
    sampler = factory.build(method_config(config, "vanilla", steps), shape, model)
    for method in METHODS:
      # At N the frequency filter is the identity: TDAS is the space filter alone, or vanilla.
      same_as = None
      if steps == full and method == "tdas_one_zone":
        same_as = "tdas"
      elif steps == full and method == "tdas" and not tdas.use_space:
        same_as = "vanilla"
      if same_as is not None:
        rows += [dict(r, method=method) for r in rows if r["steps"] == steps
                 and r["method"] == same_as]
        previews[(method, steps)] = previews[(same_as, steps)]
        continue
      method_tdas = tdas_settings.resolve(method_config(config, method, steps, calibration))
      compile_sampler(sampler, variables, method_tdas)
      for seed in range(seeds):
        x, nfe, seconds = draw(sampler, variables, method_tdas, steps, seed)
        images = to_data_scale(x, config.data.centered)
        row = dict(method=method, steps=steps, speedup=full / steps, seed=seed, nfe=nfe,
                   seconds=seconds, **measure(images))
        rows.append(row)
        logging.info("%s N'=%d seed %d: FD %.3f, freq dev %.4f, label entropy %.3f, %.1f s",
                     method, steps, seed, row["frechet_distance"], row["frequency_deviation"],
                     row["label_entropy"], seconds)
        if seed == 0:
          previews[(method, steps)] = to_uint8(x[:16], config.data.centered)
  result = dict(
      config="configs/demo/digits_ncsnpp.py", checkpoint=source, full_steps=full,
      budgets=budgets, num_samples=num_samples, seeds=seeds,
      space_filter=dict(alpha=float(space_alpha), f=tdas.space_f) if tdas.use_space else None,
      calibration_samples=calibration_samples, calibration_seed=1000,
      sampler=dict(predictor=config.sampling.predictor, corrector=config.sampling.corrector,
                   snr=config.sampling.snr),
      classifier=digits_classifier.load_info(), real_floor=real_floor(measure, num_samples, seeds),
      device=str(jax.devices()[0].device_kind), calibrations=calibrations, rows=rows,
      **summarise(rows, budgets))
  if grid_path:
    save_grids(grid_path, previews, budgets)
  return result


def save_grids(path: str, previews, budgets) -> None:
  """One PNG: a 4x4 grid per (method row, budget column)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(METHODS), len(budgets), figsize=(1.9 * len(budgets), 6.3),
                           squeeze=False)
  for i, method in enumerate(METHODS):
    for j, steps in enumerate(budgets):
      axis = axes[i][j]
      axis.imshow(image_grid(previews[(method, steps)], 4)[..., 0], cmap="gray",
                  vmin=0, vmax=255)
      axis.set_xticks([])
      axis.set_yticks([])
      if i == 0:
        axis.set_title(f"N'={steps} ({2 * steps} NFE)", fontsize=9)
      if j == 0:
        axis.set_ylabel(LABELS[method], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(result, path: str) -> None:
  """Fréchet distance and frequency deviation vs NFE, mean ± std over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"vanilla": "o-", "tdas": "s-", "tdas_one_zone": "^--"}
  for method in METHODS:
    entries = sorted((e for e in result["table"] if e["method"] == method),
                     key=lambda e: e["nfe"])
    nfe = [e["nfe"] for e in entries]
    for axis, field in zip(axes, ("frechet_distance", "frequency_deviation")):
      axis.errorbar(nfe, [e[field] for e in entries], yerr=[e[field + "_std"] for e in entries],
                    fmt=styles[method], capsize=3, label=LABELS[method])
  floor = result["real_floor"]["frechet_distance"]
  axes[0].axhline(floor, color="gray", ls=":", label="real digits (floor)")
  axes[0].set_ylabel("Fréchet distance (classifier features)")
  axes[1].set_ylabel("frequency deviation (mean |ln Dev|)")
  for axis in axes:
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("NFE")
    axis.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"digits NCSN++ (VE, N = {result['full_steps']}), {result['num_samples']} "
               f"samples x {result['seeds']} seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def table_text(result) -> str:
  """The Markdown table the benchmarks' README shows: per budget and method, the Fréchet distance
  (mean ± the 95 % interval's half width over seeds) and each TDAS variant's paired difference
  to vanilla on the same seeds (`benchmarks.paired_stats`), with its verdict."""
  lines = ["| N' | NFE | method | Fréchet distance | − vanilla, paired [95 % interval] | "
           "freq. deviation | label entropy | seconds |",
           "|---:|---:|---|---:|---|---:|---:|---:|"]
  distance = {(r["method"], r["steps"], r["seed"]): r["frechet_distance"] for r in result["rows"]}
  for steps in result["budgets"]:
    vanilla = {seed: d for (m, s, seed), d in distance.items() if m == "vanilla" and s == steps}
    for method in METHODS:
      e = next(e for e in result["table"] if e["method"] == method and e["steps"] == steps)
      mine = {seed: d for (m, s, seed), d in distance.items() if m == method and s == steps}
      _, value, versus = paired_stats.paired_cells(mine, vanilla, 2)
      if method == "vanilla" or mine == vanilla:
        versus = "" if method == "vanilla" else "the same samples"
      lines.append(
          f"| {steps} | {e['nfe']} | {LABELS[method]} | {value} | {versus} | "
          f"{e['frequency_deviation']:.3f} ± {e['frequency_deviation_std']:.3f} | "
          f"{e['label_entropy']:.3f} | {e['seconds']:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  stem = os.path.splitext(FLAGS.out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  result = run(FLAGS.workdir, FLAGS.speedups, FLAGS.num_samples, FLAGS.seeds,
               FLAGS.calibration_samples, FLAGS.bins, grid_path=stem + "_grids.png",
               space_alpha=FLAGS.space_alpha)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  plot(result, stem + ".png")
  print(table_text(result))
  print(json.dumps(result["speedup_at_equal_distance"], indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
