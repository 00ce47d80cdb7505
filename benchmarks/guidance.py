"""Class-conditional sampling on the shipped digits NCSN++: does the sampler draw the class asked
for, and at what cost to quality, against the guidance scale, vanilla and with TDAS.

    python -m benchmarks.guidance --out benchmarks/results/guidance.json --workdir runs/guidance

For each method and NFE budget it samples `--num_samples` digits per seed with the labels
0, 1, ..., 9 cycled (`sampling.guidance.labels = uniform`), guided by the noise-conditional
classifier `configs/demo/digits_classifier.py` (weights `assets/digits_classifier/params.msgpack`)
at each scale w of `--scales` (score + w ∇ log p_t(y | x); w = 0 is unguided), vanilla and with
TDAS calibrated for that method and budget on unconditional samples (`benchmarks.samplers`' way).
Three measures, all from the independent metric classifier `evaluation/digits_classifier.py`
(not the guiding one): the share of samples it reads as the requested class, and the Fréchet
distance and the kernel distance (KID x 10^3, unbiased at any sample count) of its features to
the 300 held-out digits. Every variant and scale draws from the same seeds, so each scale is
paired with w = 0 and TDAS with vanilla (`benchmarks.paired_stats`).
Writes the JSON (every row per seed), FILE_grid.png (a row per class, at w = `--grid_scale`)
and prints the tables. `--merge` adds earlier runs' rows (the later file's row wins where one
method, variant, NFE, scale, sample count and seed is in both); with `--methods=` it only
merges them. Rows of different sample counts are never paired.
"""
import json
import os

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

import checkpoints
import errors
from atomic_io import atomic_write_text
from benchmarks import learned_tdas
from benchmarks import paired_stats
from benchmarks.sampler_budgets import LABELS, steps_for
from benchmarks.samplers import method_config
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier
from images import class_grid, save_png, to_data_scale, to_uint8
from models import classifiers
from sampling import devices, factory
from sampling.guidance import GuidedVariables
from tdas import settings as tdas_settings

REPOSITORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
CLASSIFIER_CONFIG = os.path.normpath(os.path.join(REPOSITORY, "configs", "demo",
                                                  "digits_classifier.py"))
CLASSIFIER_WEIGHTS = os.path.normpath(os.path.join(REPOSITORY, "assets", "digits_classifier",
                                                   "params.msgpack"))
# (field, title, digits shown, higher is better)
MEASURES = (("accuracy", "Accuracy of the requested class", 3, True),
            ("frechet_distance", "Fréchet distance", 1, False),
            ("kernel_distance", "Kernel distance (KID × 10³)", 2, False))


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "guidance.json", "JSON output; FILE_grid.png is written beside it.")
  flags.DEFINE_string("workdir", "runs/guidance", "Where TDAS's calibrations go.")
  flags.DEFINE_list("methods", ["dpmpp_2m_sde", "pc"], "Sampling methods.")
  flags.DEFINE_list("nfe", ["20", "80"], "NFE budgets.")
  flags.DEFINE_list("scales", ["0", "1", "2", "4"], "Guidance scales w (0: unguided).")
  flags.DEFINE_list("variants", ["vanilla", "tdas"], "vanilla and/or tdas.")
  flags.DEFINE_integer("num_samples", 500, "Samples per point and seed (50 per class at 500).")
  flags.DEFINE_integer("seeds", 3, "Seeds; every variant and scale draws from the same ones.")
  flags.DEFINE_integer("calibration_samples", 200, "Samples per TDAS calibration set.")
  flags.DEFINE_string("classifier_config", CLASSIFIER_CONFIG, "The guiding classifier's config.")
  flags.DEFINE_string("classifier_weights", CLASSIFIER_WEIGHTS, "Its params (flax msgpack).")
  flags.DEFINE_float("grid_scale", 2.0, "The grid's guidance scale (one of --scales).")
  flags.DEFINE_list("merge", [], "Earlier runs' JSON files whose rows join this run's.")


FLAGS = flags.FLAGS


def guided_config(base, method, steps, filter_file, classifier_config, classifier_weights):
  """`method_config` with guidance on: labels 0..9 cycled, the guiding classifier's files."""
  config = method_config(base, method, steps, filter_file)
  guidance = config.sampling.guidance
  guidance.labels, guidance.classifier, guidance.checkpoint = (
      "uniform", classifier_config, classifier_weights)
  return config


def measure(quality, images, labels) -> dict:
  """The metric classifier's reading of class-conditional samples (N, 16, 16, 1) in [0, 1]
  against the requested `labels` (N,): accuracy (overall and per class), the Fréchet and kernel
  distances and the label entropy, from one pass of `digits_classifier.DigitsQuality`."""
  result = quality(images, labels)
  return {k: result[k] for k in ("accuracy", "per_class_accuracy", "frechet_distance",
                                 "kernel_distance", "label_entropy")}


def run(workdir, methods, budgets, scales, variants, num_samples, seeds, calibration_samples,
        classifier_config, classifier_weights, grid_scale):
  base = digits_ncsnpp.get_config()
  base.sampling.tdas.use_space = False
  base.sampling.vanilla_comparison = False
  devices.set_matmul_precision(base)
  variables, source = checkpoints.load_variables(base, workdir)
  quality = digits_classifier.DigitsQuality(digits_classifier.load_classifier())
  shape = (num_samples, base.data.image_size, base.data.image_size, base.data.num_channels)
  rows, grid, classifier_variables, calibrations = [], None, None, {}
  for method in methods:
    for budget in budgets:
      steps = steps_for(method, budget)
      for variant in variants:
        filter_file = ""
        if variant == "tdas":
          summary = learned_tdas.calibrate(method_config(base, method, steps),
                                           os.path.join(workdir, method), steps,
                                           calibration_samples)
          filter_file = summary["filter_file"]
          calibrations[f"{method}_{steps}"] = summary["fits"]["zones"]
        config = guided_config(base, method, steps, filter_file, classifier_config,
                               classifier_weights)
        sampler = factory.build(config, shape)
        guidance = sampler.setup.guidance
        if classifier_variables is None:
          classifier_variables = classifiers.load_params(guidance.classifier_config,
                                                         guidance.checkpoint)
        labels = guidance.labels_for(num_samples)
        tdas = tdas_settings.resolve(config)
        for scale in scales:
          # One compiled program for every scale: w is an argument (GuidedVariables.scale).
          guided = GuidedVariables(variables, classifier_variables, jnp.asarray(labels),
                                   jnp.float32(scale))
          for seed in range(seeds):
            x, nfe, seconds = learned_tdas.draw(sampler, guided, tdas, steps, seed)
            row = dict(method=method, variant=variant, steps=steps, nfe=nfe, scale=scale,
                       seed=seed, num_samples=num_samples, seconds=seconds,
                       **measure(quality, to_data_scale(x, base.data.centered), labels))
            rows.append(row)
            logging.info("%s %s %d NFE w=%g seed %d: accuracy %.3f, FD %.2f", method, variant,
                         nfe, scale, seed, row["accuracy"], row["frechet_distance"])
            if seed == 0 and grid is None and scale == grid_scale and variant == "vanilla":
              grid = (f"{LABELS[method]}, {nfe} NFE, w = {scale:g}, seed 0",
                      to_uint8(x[:100], base.data.centered), labels[:100])
  return dict(config="configs/demo/digits_ncsnpp.py", checkpoint=source,
              classifier=dict(config=os.path.relpath(classifier_config, REPOSITORY),
                              weights=os.path.relpath(classifier_weights, REPOSITORY)),
              methods=list(methods), budgets=list(budgets), scales=list(scales),
              num_samples=num_samples, seeds=seeds, calibrations=calibrations,
              device=str(jax.devices()[0].device_kind), rows=rows,
              tables=tables(rows)), grid


def _cell(rows, method, variant, budget_steps, scale, num_samples, field):
  return {r["seed"]: r[field] for r in rows if r["method"] == method and r["variant"] == variant
          and r["steps"] == budget_steps and r["scale"] == scale
          and r.get("num_samples") == num_samples and r.get(field) is not None}


def _row_key(row):
  return (row["method"], row["variant"], row["steps"], row["scale"], row.get("num_samples"),
          row["seed"])


def merge_rows(*row_lists) -> list:
  """The rows of several runs; where two hold the same method, variant, steps, scale, sample
  count and seed, the later list's row is kept."""
  merged = {}
  for rows in row_lists:
    merged.update({_row_key(r): r for r in rows})
  return list(merged.values())


def tables(rows) -> list:
  """Per (method, steps, sample count, variant, scale): each measure's mean with its 95 %
  interval over seeds, the paired difference to w = 0 (same method, variant, sample count and
  seeds) and, for TDAS, to vanilla at the same w."""
  found = []
  keys = sorted({(r["method"], r["steps"], r["nfe"], r.get("num_samples"), r["variant"],
                  r["scale"]) for r in rows},
                key=lambda k: (k[0], k[1], -(k[3] or 0), k[4] != "vanilla", k[5]))
  for method, steps, nfe, num_samples, variant, scale in keys:
    entry = dict(method=method, steps=steps, nfe=nfe, num_samples=num_samples, variant=variant,
                 scale=scale)
    for field, _, _, higher_is_better in MEASURES:
      mine = _cell(rows, method, variant, steps, scale, num_samples, field)
      if not mine:  # (runs from before the measure existed)
        continue
      entry[field] = paired_stats.t_interval(list(mine.values())).to_json()
      for name, other in (
          ("minus_unguided", _cell(rows, method, variant, steps, 0, num_samples, field)),
          ("minus_vanilla", _cell(rows, method, "vanilla", steps, scale, num_samples, field))):
        if not other or (name == "minus_unguided" and scale == 0) or (
            name == "minus_vanilla" and variant == "vanilla"):
          continue
        difference = paired_stats.paired_difference(mine, other)
        entry[f"{field}_{name}"] = dict(difference.to_json(), verdict=paired_stats.verdict(
            difference, lower_is_better=not higher_is_better))
    found.append(entry)
  return found


def _verdict_or_blank(cell, digits) -> str:
  return "" if cell is None else paired_stats.verdict_text(cell, digits)


def table_text(result) -> str:
  """Markdown: a table per measure, a row per (method, NFE, sample count, variant, w): the mean
  ± the 95 % interval's half width over seeds, the paired difference to w = 0 and, for TDAS, to
  vanilla at the same w."""
  text = []
  for field, title, digits, _ in MEASURES:
    lines = [f"{title}:", "",
             "| sampler | NFE | N | variant | w | mean | − w = 0, paired | − vanilla, paired |",
             "|---|---:|---:|---|---:|---:|---|---|"]
    for e in result["tables"]:
      if field not in e:
        continue
      lines.append(
          f"| {LABELS[e['method']]} | {e['nfe']} | {e.get('num_samples') or ''} | "
          f"{e['variant']} | {e['scale']:g} | "
          f"{paired_stats.format_value(paired_stats.Interval.from_json(e[field]), digits)} | "
          f"{_verdict_or_blank(e.get(f'{field}_minus_unguided'), digits)} | "
          f"{_verdict_or_blank(e.get(f'{field}_minus_vanilla'), digits)} |")
    if len(lines) > 4:
      text.append("\n".join(lines))
  return "\n\n".join(text)


def merged_result(earlier: list, result: dict) -> dict:
  """This run's result (possibly empty) with the earlier runs' rows and calibrations joined."""
  base = dict(earlier[0], **{k: v for k, v in result.items() if k not in ("rows", "tables")})
  rows = merge_rows(*[e["rows"] for e in earlier], result["rows"])
  base.update(
      rows=rows, tables=tables(rows),
      methods=sorted({r["method"] for r in rows}), budgets=sorted({r["nfe"] for r in rows}),
      scales=sorted({r["scale"] for r in rows}),
      num_samples=sorted({r.get("num_samples") for r in rows if r.get("num_samples")}),
      seeds=max(r["seed"] for r in rows) + 1,
      calibrations={k: v for e in earlier + [result] for k, v in e["calibrations"].items()})
  return base


def main(argv):
  del argv
  scales = [float(s) for s in FLAGS.scales]
  if any(not np.isfinite(s) or s < 0 for s in scales):
    raise errors.UserError(f"--scales must be >= 0, got {FLAGS.scales}.")
  unknown = [v for v in FLAGS.variants if v not in ("vanilla", "tdas")]
  if unknown:
    raise errors.UserError(f"--variants takes vanilla and/or tdas, got {unknown}.")
  earlier = []
  for path in FLAGS.merge:
    try:
      with open(path) as f:
        earlier.append(json.load(f))
    except (OSError, ValueError) as e:
      raise errors.UserError(f"--merge: cannot read {path!r} ({type(e).__name__}: {e}).") from e
  if not FLAGS.methods and not earlier:
    raise errors.UserError("--methods is empty and nothing is merged (--merge): nothing to do.")
  result, grid = dict(rows=[], calibrations={}), None
  if FLAGS.methods:
    if FLAGS.grid_scale not in scales:
      raise errors.UserError(f"--grid_scale={FLAGS.grid_scale:g} is not one of --scales "
                             f"{FLAGS.scales}.")
    result, grid = run(FLAGS.workdir, list(FLAGS.methods), [int(n) for n in FLAGS.nfe], scales,
                       list(FLAGS.variants), FLAGS.num_samples, FLAGS.seeds,
                       FLAGS.calibration_samples, FLAGS.classifier_config,
                       FLAGS.classifier_weights, FLAGS.grid_scale)
  if earlier:
    result = merged_result(earlier, result)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  if grid is not None:
    title, images, labels = grid
    save_png(os.path.splitext(FLAGS.out)[0] + "_grid.png", class_grid(images, labels, 10))
    logging.info("Grid: %s, a row per class 0..9.", title)
  print(table_text(result))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
