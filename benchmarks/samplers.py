"""Every sampler at equal NFE on the shipped digits NCSN++, vanilla and with TDAS calibrated for
that sampler and budget.

    python -m benchmarks.samplers --out benchmarks/results/samplers.json --workdir runs/samplers

For each method (`config.sampling.method`) and NFE budget it draws `--num_samples` digits per seed
and measures them as `benchmarks.learned_tdas` does: the digits classifier's Fréchet distance to
the held-out digits (with the real-data floor), the frequency deviation and the label entropy.
At the `--tdas_nfe` budgets it also calibrates TDAS for that method (`--mode calibrate` with the
method's own samples at the full N = model.num_scales steps and at the budget) and samples with
the fitted filter. Writes the JSON, FILE.png (Fréchet distance against NFE, a line per method,
dashed with TDAS) and FILE_grids.png, and prints the README's table.
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
from benchmarks.sampler_budgets import LABELS, METHODS, configure, steps_for
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier
from images import image_grid, to_data_scale, to_uint8
from sampling import devices, factory
from tdas import settings as tdas_settings
from tools import pds_masks as tools_pds_masks
from errors import UserError

VARIANTS = ("vanilla", "tdas", "pds")
VARIANT_LABELS = {"vanilla": "", "tdas": ", TDAS (calibrated)", "pds": ", PDS (its masks)"}

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
  flags.DEFINE_string("merge", "", "An earlier run's JSON: its rows are kept wherever this run has "
                      "no row of the same method, variant, NFE and seed, and the table and plot "
                      "cover both. The sample grids show this run only.")


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
                     seconds=seconds, **measure(to_data_scale(x, base.data.centered)))
          rows.append(row)
          logging.info("%s %s %d steps (%d NFE) seed %d: FD %.2f, freq dev %.3f", method,
                       variant, steps, nfe, seed, row["frechet_distance"],
                       row["frequency_deviation"])
          if seed == 0:
            previews[(method, variant, nfe)] = to_uint8(x[:16], base.data.centered)
  return dict(config="configs/demo/digits_ncsnpp.py", checkpoint=source,
              full_steps=int(base.model.num_scales), methods=list(methods), num_samples=num_samples,
              seeds=seeds, calibration_samples=calibration_samples, calibrations=calibrations,
              real_floor=learned_tdas.real_floor(measure, num_samples, seeds),
              device=str(jax.devices()[0].device_kind), rows=rows,
              table=summarise(rows)), previews


def summarise(rows):
  """Mean ± std over seeds per (method, variant, NFE)."""
  table = []
  for key in sorted({(r["method"], r["variant"], r["nfe"]) for r in rows},
                    key=lambda k: (METHODS.index(k[0]), k[1], k[2])):
    chosen = [r for r in rows if (r["method"], r["variant"], r["nfe"]) == key]
    entry = dict(method=key[0], variant=key[1], nfe=key[2], steps=chosen[0]["steps"])
    for field in ("frechet_distance", "frequency_deviation", "label_entropy", "seconds"):
      values = np.array([r[field] for r in chosen], np.float64)
      entry[field] = float(values.mean())
      entry[field + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    table.append(entry)
  return table


def merge(earlier: dict, result: dict) -> dict:
  """`result` with the rows of `earlier` that it has no row for (same method, variant, NFE and
  seed), its methods and calibrations added, and the table recomputed."""
  key = lambda r: (r["method"], r["variant"], r["nfe"], r["seed"])
  if "budgets" not in earlier:
    raise UserError("--merge: the earlier run's JSON records no `budgets` (written by this "
                     "benchmark since --merge exists); rerun it.")
  if earlier["num_samples"] != result["num_samples"] or earlier["config"] != result["config"]:
    raise UserError("--merge: the earlier run used another config or num_samples "
                     f"({earlier['config']}, {earlier['num_samples']}); its rows do not compare.")
  present = {key(r) for r in result["rows"]}
  merged = dict(result)
  merged["rows"] = [r for r in earlier["rows"] if key(r) not in present] + result["rows"]
  merged["methods"] = [m for m in METHODS if m in set(earlier["methods"]) | set(result["methods"])]
  merged["calibrations"] = {**earlier.get("calibrations", {}), **result["calibrations"]}
  merged["seeds"] = max(earlier["seeds"], result["seeds"])
  merged["real_floor"] = earlier["real_floor"]
  merged["table"] = summarise(merged["rows"])
  merged["budgets"] = sorted(set(earlier["budgets"]) | set(result["budgets"]))
  return merged


def nfe_column(nfe: int, budgets) -> int:
  """The budget column an NFE count belongs to (Heun's 2n − 1 goes with 2n)."""
  return min(budgets, key=lambda b: abs(b - nfe))


def table_text(result, budgets) -> str:
  """Fréchet distance per method (rows) and NFE budget (columns); best vanilla per column bold."""
  columns = sorted(set(budgets) | {nfe_column(e["nfe"], budgets) for e in result["table"]})
  cells = {}
  for e in result["table"]:
    cells[(e["method"], e["variant"], nfe_column(e["nfe"], columns))] = e
  best = {c: min((e["frechet_distance"] for (m, v, cc), e in cells.items() if cc == c),
                 default=None) for c in columns}
  lines = ["| sampler | " + " | ".join(f"NFE ≈ {c}" for c in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for method in result["methods"]:
    for variant in VARIANTS:
      if not any(k[0] == method and k[1] == variant for k in cells):
        continue
      row = []
      for c in columns:
        e = cells.get((method, variant, c))
        if e is None:
          row.append("")
          continue
        text = f"{e['frechet_distance']:.1f} ± {e['frechet_distance_std']:.1f}"
        row.append(f"**{text}**" if e["frechet_distance"] == best[c] else text)
      name = LABELS[method] + VARIANT_LABELS[variant]
      lines.append(f"| {name} | " + " | ".join(row) + " |")
  floor = result["real_floor"]
  lines.append(f"| real digits (floor) | {floor['frechet_distance']:.1f} ± "
               f"{floor['frechet_distance_std']:.1f} |" + " |" * (len(columns) - 1))
  return "\n".join(lines)


def plot(result, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axis = plt.subplots(figsize=(8, 5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for k, method in enumerate(result["methods"]):
    for variant, style in (("vanilla", "o-"), ("tdas", "s--"), ("pds", "^:")):
      entries = sorted((e for e in result["table"] if e["method"] == method
                        and e["variant"] == variant), key=lambda e: e["nfe"])
      if not entries:
        continue
      axis.errorbar([e["nfe"] for e in entries], [e["frechet_distance"] for e in entries],
                    yerr=[e["frechet_distance_std"] for e in entries], fmt=style, capsize=3,
                    color=colors[k % len(colors)],
                    label=LABELS[method] + VARIANT_LABELS[variant])
  axis.axhline(result["real_floor"]["frechet_distance"], color="gray", ls=":",
               label="real digits (floor)")
  axis.set_xscale("log")
  axis.set_yscale("log")
  axis.set_xlabel("NFE")
  axis.set_ylabel("Fréchet distance (digits classifier features)")
  axis.grid(True, which="both", alpha=0.3)
  axis.legend(fontsize=7)
  axis.set_title(f"digits NCSN++ (VE), {result['num_samples']} samples x {result['seeds']} seeds")
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
  if FLAGS.merge:
    with open(FLAGS.merge) as f:
      result = merge(json.load(f), result)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  plot(result, stem + ".png")
  save_grids(stem + "_grids.png", previews, result["methods"], sorted(budgets + pc_budgets))
  print(table_text(result, result["budgets"]))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
