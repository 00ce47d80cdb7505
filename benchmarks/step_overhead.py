"""What TDAS costs per sampler step, and how close the sampler is to bare network forwards.

    python -m benchmarks.step_overhead --out runs/step_overhead.json            # CPU: 256 px, nf 16
    python -m benchmarks.step_overhead --config ve/ffhq_ncsnpp_continuous --nf 0 --batch 1,8
                                                                                # GPU: full FFHQ 1024

Random weights (speed does not depend on them). For each batch size it measures, interleaved in
one process: a bare forward (a jitted fori_loop of forwards divided by their count, as DESIGN.md
asks; the same forwards as separate jitted calls are recorded beside it), and each `--methods`
sampler's whole jitted run of `--steps` steps with TDAS off and on (DCT zoned filter + space
filter). Reports TDAS's overhead and the run's time over NFE × forward: from the best of the
repeats, and as the median of each interleaved round's ratios.
"""
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import errors
from benchmarks.sampler_budgets import configure
from models import utils as model_utils
from sampling import factory
from tdas import filters as tdas_filters
from tdas.settings import TDAS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("config", "ve/ffhq_256_ncsnpp_continuous", "Config under configs/.")
  flags.DEFINE_integer("nf", 16, "Network width (model.nf); 0 keeps the config's.")
  flags.DEFINE_list("batch", ["1"], "Batch sizes.")
  flags.DEFINE_integer("steps", 4, "Sampler steps per timed call.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats of each variant (interleaved); the minimum "
                       "and the median of each round's ratios are reported.")
  flags.DEFINE_string("out", "step_overhead.json", "JSON output.")
  flags.DEFINE_list("methods", ["pc"], "Sampling methods to time (config.sampling.method).")
  flags.DEFINE_enum("precision", "highest", ["default", "high", "highest"],
                    "jax_default_matmul_precision (GPUs run float32 convolutions as TF32 under "
                    "'default').")


FLAGS = flags.FLAGS


def _time(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(config, batch, steps, repeats, methods=("pc",)):
  """Seconds per call for one batch size: a bare forward, and each method's whole run (`steps`
  steps) with TDAS off and on. Returns one row per method."""
  size, channels = config.data.image_size, config.data.num_channels
  shape = (batch, size, size, channels)
  model = model_utils.create_model(config)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  labels = jnp.full((batch,), 1.0)
  variables = jax.jit(lambda k: model.init(k, x, labels, train=False))(jax.random.PRNGKey(1))

  @jax.jit
  def forwards(variables, x):
    def body(_, x):  # feed the output back so no forward can be skipped or hoisted
      return model.apply(variables, x, labels, train=False) * 1e-3 + x
    return jax.lax.fori_loop(0, steps, body, x)

  freq = tdas_filters.frequency_filter(shape[1:], 0.4, 0.455, 0.955, 0.878)
  space = tdas_filters.space_filter(np.random.RandomState(0).uniform(0.2, 0.8, shape[1:]))
  tdas = TDAS.from_arrays(space=jax.device_put(space), freq=jax.device_put(freq))
  single_forward = jax.jit(lambda variables, x: model.apply(variables, x, labels, train=False))

  def forward_calls():  # the same forwards as separate jitted calls, for comparison
    y = x
    for _ in range(steps):
      y = single_forward(variables, y) * 1e-3 + y
    return y

  rng = jax.random.PRNGKey(2)
  variants = {"forward": lambda: forwards(variables, x), "forward_calls": forward_calls}
  samplers = {}
  for method in methods:
    samplers[method] = sampler = factory.build(configure(config, method, steps), shape, model)
    variants[f"{method}_vanilla"] = lambda s=sampler: s.sample(rng, variables, None).samples
    variants[f"{method}_tdas"] = lambda s=sampler: s.sample(rng, variables, tdas).samples
  compile_seconds = {name: _time(fn) for name, fn in variants.items()}  # first call compiles
  times = {name: [] for name in variants}
  for _ in range(repeats):  # interleaved, so that the machine's drift hits every variant alike
    for name, fn in variants.items():
      times[name].append(_time(fn))
  times = {name: np.array(values) for name, values in times.items()}
  best = {name: float(values.min()) for name, values in times.items()}
  forward = best["forward"] / steps
  rows = []
  for method, sampler in samplers.items():
    vanilla, colored = best[f"{method}_vanilla"], best[f"{method}_tdas"]
    # Ratios within each interleaved round, whose median resists the machine's slow drift.
    round_ratio = times[f"{method}_vanilla"] / (sampler.nfe * times["forward"] / steps)
    round_ratio_tdas = times[f"{method}_tdas"] / (sampler.nfe * times["forward"] / steps)
    rows.append(dict(
        batch=batch, method=method, steps=steps, nfe=sampler.nfe,
        evaluations_per_step=sampler.nfe / steps, forward=forward,
        forward_separate_calls=best["forward_calls"] / steps,
        step_vanilla=vanilla / steps, step_tdas=colored / steps,
        tdas_overhead=colored / vanilla - 1.0,
        tdas_overhead_median=float(np.median(times[f"{method}_tdas"]
                                             / times[f"{method}_vanilla"]) - 1.0),
        sampler_over_forwards_median=float(np.median(round_ratio)),
        sampler_over_forwards_tdas_median=float(np.median(round_ratio_tdas)),
        seconds=dict(forward=times["forward"].tolist(),
                     vanilla=times[f"{method}_vanilla"].tolist(),
                     tdas=times[f"{method}_tdas"].tolist()),
        sampler_over_forwards=vanilla / (sampler.nfe * forward),
        compile_seconds={k: v for k, v in compile_seconds.items()
                         if k.startswith("forward") or k.startswith(method + "_")}))
  return rows


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", FLAGS.precision)
  config = importlib.import_module("configs." + FLAGS.config.replace("/", ".")).get_config()
  if FLAGS.nf:
    config.model.nf = FLAGS.nf
  rows = [row for b in FLAGS.batch
          for row in measure(config, int(b), FLAGS.steps, FLAGS.repeats, FLAGS.methods)]
  result = dict(config=FLAGS.config, nf=config.model.nf, precision=FLAGS.precision,
                image_size=config.data.image_size, xla_flags=os.environ.get("XLA_FLAGS", ""),
                device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
                rows=rows)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{FLAGS.config} at {config.data.image_size} px, nf {config.model.nf}, on "
        f"{result['device']}, matmul precision {FLAGS.precision}")
  print("| batch | method | NFE | forward (s) | step vanilla (s) | step TDAS (s) | TDAS overhead "
        "(best; median) | run / (NFE x forward) (best; median; TDAS median) |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch']} | {r['method']} | {r['nfe']} | {r['forward']:.4f} | "
          f"{r['step_vanilla']:.4f} | {r['step_tdas']:.4f} | {100 * r['tdas_overhead']:+.1f} %; "
          f"{100 * r['tdas_overhead_median']:+.1f} % | {r['sampler_over_forwards']:.3f}; "
          f"{r['sampler_over_forwards_median']:.3f}; "
          f"{r['sampler_over_forwards_tdas_median']:.3f} |")


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
