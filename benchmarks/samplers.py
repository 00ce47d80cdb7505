"""Every sampler at equal NFE on the shipped digits NCSN++, vanilla and with TDAS calibrated for
that sampler and budget.

    python -m benchmarks.samplers --out benchmarks/results/samplers.json --workdir runs/samplers

For each method (`config.sampling.method`) and NFE budget it draws `--num_samples` digits per seed
and measures them as `benchmarks.learned_tdas` does (the digits classifier's Fréchet distance and
KID to the held-out digits, the frequency deviation and the label entropy), with the real-data
floor at the same N. At the `--tdas_nfe` budgets it also calibrates TDAS for that method
(`--mode calibrate` with the method's own samples at the full N = model.num_scales steps and at
the budget) and samples with the fitted filter. Every variant draws from the same seeds, and
`benchmarks.ranking` pairs them: each against vanilla DPM-Solver++(2M) SDE, TDAS against vanilla,
PDS against TDAS and vanilla, with 95 % intervals and verdicts. Writes the JSON (every row per
seed), FILE.png (Fréchet distance against NFE with the intervals, a line per method, dashed with
TDAS) and FILE_grids.png, and prints the tables; `--merge` adds earlier runs' rows (with
`--methods=` it only merges them, drawing nothing but the real-data floor at `--num_samples`).
"""
import json
import os

from absl import app, flags, logging
import jax
import numpy as np

import errors
import checkpoints
from atomic_io import atomic_savez, atomic_write_text
from benchmarks import learned_tdas
from benchmarks import paired_stats
from benchmarks import ranking
from benchmarks.ranking import VARIANTS, VARIANT_LABELS, MEASURES, nfe_column
from benchmarks.sampler_budgets import LABELS, METHODS, configure, steps_for
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier
from images import image_grid, to_data_scale, to_uint8
from sampling import devices, factory
from tdas import settings as tdas_settings
from tools import pds_masks as tools_pds_masks
from errors import UserError


# --out, --workdir (the calibrations go in one folder a method below it), --num_samples, --seeds,
# --calibration_samples and --bins are `benchmarks.learned_tdas`'s flags, shared.


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  learned_tdas.define_flags()  # the flags it shares: --out, --workdir, --num_samples, ...
  flags.DEFINE_list("methods", list(METHODS), "Methods to rank.")
  flags.DEFINE_list("nfe", ["10", "20", "40", "80"], "NFE budgets.")
  flags.DEFINE_list("pc_nfe", ["200", "400"], "Extra budgets for PC, which needs far more.")
  flags.DEFINE_list("tdas_nfe", ["20"], "Budgets at which each method is also run with TDAS.")
  flags.DEFINE_list("pds_nfe", ["20", "40"], "Budgets at which PC also runs as PDS (its masks from "
                    "200 training digits, alpha 5, preconditioned drift).")
  flags.DEFINE_list("variants", list(VARIANTS), "Which variants run (e.g. `tdas` alone, to add "
                    "budgets to an earlier run with --merge).")
  flags.DEFINE_list("merge", [], "Earlier runs' JSON files: their rows are kept wherever this "
                    "run (or a file before them in the list) has no row of the same method, "
                    "variant, NFE, seed and sample count, and the tables and plot cover all. The "
                    "sample grids show this run only.")


FLAGS = flags.FLAGS


def method_config(config, method: str, steps: int, filter_file: str = "", masks=None):
  """One sampler's config: vanilla, TDAS with a calibrated filter file, or PDS with its masks."""
  config = configure(config, method, steps)
  tdas = config.sampling.tdas
  tdas.enabled = bool(filter_file or masks)
  tdas.filter_file = filter_file
  if masks:
    tdas.transform, tdas.precondition_drift, tdas.use_space = "dft", True, True
    tdas.pds_space_mask, tdas.pds_freq_mask = masks
  return config


def pds_masks(workdir: str):
  """PDS's masks of the first 200 training digits (`tools.pds_masks`): (space file, freq file)."""
  images, _ = digits_classifier.digits_split(evaluation=False)
  path = os.path.join(workdir, "digits_train.npz")
  atomic_savez(path, images=np.round(images * 255).astype(np.uint8))
  return tools_pds_masks.write_masks(path, 16, 1, 200, workdir)


def run(workdir, methods, budgets, pc_budgets, tdas_budgets, num_samples, seeds,
        calibration_samples, bins, pds_budgets=(), variants_run=VARIANTS):
  base = digits_ncsnpp.get_config()
  base.sampling.tdas.use_space = False
  base.sampling.vanilla_comparison = False
  devices.set_matmul_precision(base)
  variables, source = checkpoints.load_variables(base, workdir)
  measure = learned_tdas.Measure(digits_classifier.load_classifier(), bins)
  shape = (num_samples, base.data.image_size, base.data.image_size, base.data.num_channels)
  rows, previews, calibrations = [], {}, {}
  masks = pds_masks(workdir) if pds_budgets and "pc" in methods else None
  for method in methods:
    for nfe_budget in budgets + (pc_budgets if method == "pc" else []):
      steps = steps_for(method, nfe_budget)
      variants = [("vanilla", "", None)]
      if nfe_budget in tdas_budgets and steps < base.model.num_scales:
        config = method_config(base, method, steps)
        summary = learned_tdas.calibrate(config, os.path.join(workdir, method), steps,
                                         calibration_samples)
        calibrations[f"{method}_{steps}"] = dict(filter_file=summary["filter_file"],
                                                 zones=summary["fits"]["zones"])
        variants.append(("tdas", summary["filter_file"], None))
      if method == "pc" and nfe_budget in pds_budgets:
        variants.append(("pds", "", masks))
      for variant, filter_file, variant_masks in variants:
        if variant not in variants_run:
          continue
        config = method_config(base, method, steps, filter_file, variant_masks)
        sampler = factory.build(config, shape)
        tdas = tdas_settings.resolve(config)
        learned_tdas.compile_sampler(sampler, variables, tdas)
        for seed in range(seeds):
          x, nfe, seconds = learned_tdas.draw(sampler, variables, tdas, steps, seed)
          row = dict(method=method, variant=variant, steps=steps, nfe=nfe, seed=seed,
                     num_samples=num_samples, seconds=seconds,
                     **measure(to_data_scale(x, base.data.centered)))
          rows.append(row)
          logging.info("%s %s %d steps (%d NFE) seed %d: FD %.2f, freq dev %.3f", method,
                       variant, steps, nfe, seed, row["frechet_distance"],
                       row["frequency_deviation"])
          if seed == 0:
            previews[(method, variant, nfe)] = to_uint8(x[:16], base.data.centered)
  result = dict(config="configs/demo/digits_ncsnpp.py", checkpoint=source,
                full_steps=int(base.model.num_scales), methods=list(methods),
                num_samples=num_samples, seeds=seeds, calibration_samples=calibration_samples,
                calibrations=calibrations, real_floor=real_floors(measure, [num_samples], seeds),
                device=str(jax.devices()[0].device_kind), rows=rows,
                table=ranking.summarise(rows),
                comparisons=ranking.comparisons(rows, sorted(set(budgets) | set(pc_budgets))))
  return result, previews


def merge(earlier: dict, result: dict) -> dict:
  """`result` with the rows of `earlier` that it has no row for (same method, variant, NFE, seed
  and sample count), its methods, calibrations and floors added, and the tables recomputed."""
  key = lambda r: ranking.cell_key(r) + (r["seed"],)
  if "budgets" not in earlier:
    raise UserError("--merge: the earlier run's JSON records no `budgets` (written by this "
                     "benchmark since --merge exists); rerun it.")
  if earlier["config"] != result["config"]:
    raise UserError(f"--merge: the earlier run used another config ({earlier['config']}); its "
                     "rows do not compare.")
  for rows, run in ((earlier["rows"], earlier), (result["rows"], result)):
    for r in rows:
      r.setdefault("num_samples", run["num_samples"])  # runs before rows recorded it
  present = {key(r) for r in result["rows"]}
  merged = dict(result)
  merged["rows"] = [r for r in earlier["rows"] if key(r) not in present] + result["rows"]
  merged["methods"] = [m for m in METHODS if m in set(earlier["methods"]) | set(result["methods"])]
  merged["calibrations"] = {**earlier.get("calibrations", {}), **result["calibrations"]}
  merged["seeds"] = max(earlier["seeds"], result["seeds"])
  merged["num_samples"] = max(earlier["num_samples"], result["num_samples"])
  merged["real_floor"] = {**ranking.floors(earlier), **ranking.floors(result)}
  merged["budgets"] = sorted(set(earlier["budgets"]) | set(result["budgets"]))
  merged["table"] = ranking.summarise(merged["rows"])
  merged["comparisons"] = ranking.comparisons(merged["rows"], merged["budgets"])
  return merged


def real_floors(measure, sizes, seeds) -> dict:
  """{str(N): the measures of N real training digits against the held-out ones, per draw}, the
  floor a sampler's distances cannot go below at that N. Draws are disjoint while the 1497
  training digits allow (5 × 250; 1 × 1000), then drawn afresh (overlapping)."""
  train, _ = digits_classifier.digits_split(evaluation=False)
  order = np.random.RandomState(0).permutation(train.shape[0])
  floors = {}
  for size in sorted(set(sizes)):
    rows, disjoint = [], train.shape[0] // size
    for seed in range(seeds):
      chosen = (order[seed * size:(seed + 1) * size] if seed < disjoint else
                np.random.RandomState(seed).choice(train.shape[0], size, replace=False))
      rows.append(dict(seed=seed, **{f: measure(train[chosen])[f] for f in MEASURES}))
    floor = dict(num_samples=size, seeds=seeds, disjoint_draws=min(seeds, disjoint))
    for field in MEASURES:
      interval = paired_stats.t_interval([r[field] for r in rows])
      bounds = interval.to_json()
      floor.update({field: interval.mean, field + "_low": bounds["low"],
                    field + "_high": bounds["high"],
                    field + "_per_seed": {str(r["seed"]): r[field] for r in rows}})
    floors[str(size)] = floor
  return floors


def plot(result, path: str) -> None:
  """Fréchet distance against NFE, a line per method and variant, with the 95 % intervals over
  seeds as error bars (the largest sample count of each point), and the real-data floors."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axis = plt.subplots(figsize=(8, 5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for k, method in enumerate(result["methods"]):
    for variant, style in (("vanilla", "o-"), ("tdas", "s--"), ("pds", "^:")):
      points = {}
      for e in sorted(result["table"], key=lambda e: e.get("num_samples", 0)):
        if e["method"] == method and e["variant"] == variant:
          points[e["nfe"]] = e
      entries = [points[n] for n in sorted(points)]
      if not entries:
        continue
      means = np.array([e["frechet_distance"] for e in entries])
      lows, highs = ([m if e.get(side) is None else e[side] for e, m in zip(entries, means)]
                     for side in ("frechet_distance_low", "frechet_distance_high"))  # 1 seed: none
      below, above = means - np.array(lows), np.array(highs) - means
      axis.errorbar([e["nfe"] for e in entries], means,
                    yerr=np.nan_to_num(np.stack([below, above]), posinf=0.0), fmt=style,
                    capsize=3, color=colors[k % len(colors)],
                    label=LABELS[method] + VARIANT_LABELS[variant])
  for size, floor in ranking.floors(result).items():
    axis.axhline(floor["frechet_distance"], color="gray", ls=":", lw=1)
    axis.annotate(f"real digits, N = {size}", (axis.get_xlim()[0], floor["frechet_distance"]),
                  fontsize=7, color="gray", va="bottom")
  axis.set_xscale("log")
  axis.set_yscale("log")
  axis.set_xlabel("NFE")
  axis.set_ylabel("Fréchet distance (digits classifier features)")
  axis.grid(True, which="both", alpha=0.3)
  axis.legend(fontsize=7)
  axis.set_title(f"digits NCSN++ (VE), up to {result['num_samples']} samples × "
                 f"{result['seeds']} seeds; bars: 95 % intervals")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def save_grids(path, previews, methods, budgets) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [(m, v) for m in methods for v in VARIANTS
          if any(k[0] == m and k[1] == v for k in previews)]
  fig, axes = plt.subplots(len(rows), len(budgets), figsize=(1.7 * len(budgets), 1.8 * len(rows)),
                           squeeze=False)
  for i, (method, variant) in enumerate(rows):
    for j, budget in enumerate(budgets):
      axis = axes[i][j]
      axis.set_xticks([])
      axis.set_yticks([])
      found = [k for k in previews if k[:2] == (method, variant)
               and nfe_column(k[2], budgets) == budget]
      if found:
        axis.imshow(image_grid(previews[found[0]], 4)[..., 0], cmap="gray", vmin=0, vmax=255)
      if i == 0:
        axis.set_title(f"NFE ≈ {budget}", fontsize=9)
      if j == 0:
        axis.set_ylabel(method + VARIANT_LABELS[variant], fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  stem = os.path.splitext(FLAGS.out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  budgets = [int(n) for n in FLAGS.nfe]
  pc_budgets = [int(n) for n in FLAGS.pc_nfe]
  result, previews = run(FLAGS.workdir, list(FLAGS.methods), budgets, pc_budgets,
                         [int(n) for n in FLAGS.tdas_nfe], FLAGS.num_samples, FLAGS.seeds,
                         FLAGS.calibration_samples, FLAGS.bins,
                         [int(n) for n in FLAGS.pds_nfe if n], tuple(FLAGS.variants))
  result["budgets"] = sorted(set(budgets + pc_budgets))
  for path in FLAGS.merge:
    with open(path) as f:
      result = merge(json.load(f), result)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  plot(result, stem + ".png")
  if previews:  # (none with --methods= : a run that only merges earlier files)
    save_grids(stem + "_grids.png", previews, result["methods"], sorted(budgets + pc_budgets))
  print(ranking.table_text(result, result["budgets"]))
  print()
  print(ranking.table_text(result, result["budgets"], "kernel_distance", 2))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
