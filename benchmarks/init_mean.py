"""Does starting at the data's mean (`sampling.tdas.init_mean`) remove the prior-mismatch error?

    python -m benchmarks.init_mean --out benchmarks/results/init_mean.json

The VE prior p_T has mean m (the data's mean image) and variance σ_max² + Var(data); the standard
prior N(0, σ_max²) drops the mean. A deterministic solver carries that offset, shrunk by
roughly √v / σ_max, to the end. On the analytic Gaussian (exact score; mean image 0.33–0.56,
σ_max = 10) this measures the per-dimension W2 of `--num_samples` samples per method and NFE,
starting from N(0, σ_max²) and from m + σ_max ξ, on `--seeds` seeds: a seed fixes ξ and every
later draw, so the two priors are compared paired on it (`benchmarks.paired_stats`). Prints a
Markdown table; writes JSON.
"""
import json
import os
import tempfile

from absl import app, flags
import jax
import numpy as np

import errors
from benchmarks import paired_stats
from atomic_io import atomic_write_text
from configs.analytic import get_analytic_config
from models import analytic
from sampling import factory
from tdas import files, settings


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "init_mean.json", "JSON output.")
  flags.DEFINE_integer("size", 16, "Image size of the analytic target.")
  flags.DEFINE_integer("sigma_max", 10, "σ_max of the VE SDE.")
  flags.DEFINE_integer("num_samples", 2000, "Samples per point.")
  flags.DEFINE_list("methods", ["heun", "dpmpp_2m", "dpmpp_2m_sde", "euler_ancestral"], "Methods.")
  flags.DEFINE_list("nfe", ["10", "20", "50"], "NFE budgets.")
  flags.DEFINE_integer("seeds", 3, "Seeds per point (the floor's draws use seeds 1000 + s).")


FLAGS = flags.FLAGS


def run(size, sigma_max, num_samples, methods, budgets, seeds=1):
  """Rows {method, nfe, seed, standard_prior, init_mean} (W2 of each prior's samples)."""
  config = get_analytic_config(size, sigma_max)
  variables = analytic.target_variables(config)
  mean = np.asarray(variables["target"]["mean"], np.float64)
  space_file = os.path.join(tempfile.mkdtemp(), "space.npz")
  files.save_space(space_file, mean, np.ones_like(mean), "sqrt", 1.0, 1)
  config.sampling.tdas.update(dict(enabled=True, use_frequency=False, use_space=False,
                                   space_file=space_file, init_mean=True))
  floors = [analytic.dct_diagonal_w2(np.asarray(analytic.sample_target(
      jax.random.PRNGKey(1000 + seed), variables, num_samples)), variables)
            for seed in range(seeds)]
  rows = []
  for method in methods:
    for nfe in budgets:
      config.sampling.method = method
      config.sampling.num_steps = (nfe + 1) // 2 if method in ("heun", "edm") else nfe
      sampler = factory.build(config, (num_samples, size, size, config.data.num_channels))
      for seed in range(seeds):
        row = dict(method=method, nfe=sampler.nfe, seed=seed)
        for name, tdas in (("standard_prior", None), ("init_mean", settings.resolve(config))):
          x = np.asarray(sampler.sample(jax.random.PRNGKey(seed), variables, tdas).samples)
          row[name] = analytic.dct_diagonal_w2(x, variables)
        rows.append(row)
        print(row, flush=True)
  return dict(size=size, sigma_max=sigma_max, num_samples=num_samples, seeds=seeds,
              w2_floor_per_seed=floors, mean_range=[float(mean.min()), float(mean.max())],
              rows=rows)


def table_text(result):
  """W2 of each prior (mean ± the 95 % interval's half width over seeds) and init_mean − standard,
  paired on the seeds, with its interval and verdict."""
  lines = ["| method | NFE | W2, prior N(0, σ_max²) | W2, prior m + σ_max ξ (`init_mean`) | "
           "`init_mean` − standard, paired |", "|---|---:|---:|---:|---|"]
  cells = sorted({(r["method"], r["nfe"]) for r in result["rows"]},
                 key=lambda c: ([r["method"] for r in result["rows"]].index(c[0]), c[1]))
  for method, nfe in cells:
    chosen = [r for r in result["rows"] if (r["method"], r["nfe"]) == (method, nfe)]
    standard, started = ({r["seed"]: r[name] for r in chosen}
                         for name in ("standard_prior", "init_mean"))
    lines.append(f"| {method} | {nfe} | "
                 + " | ".join(paired_stats.paired_cells(started, standard, 4)) + " |")
  floor = paired_stats.t_interval(result["w2_floor_per_seed"])
  lines.append(f"| exact samples (floor) | | {paired_stats.format_value(floor, 4)} | | |")
  return "\n".join(lines)


def main(argv):
  del argv
  result = run(FLAGS.size, FLAGS.sigma_max, FLAGS.num_samples, list(FLAGS.methods),
               [int(n) for n in FLAGS.nfe], FLAGS.seeds)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2) + "\n")
  print(table_text(result))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
