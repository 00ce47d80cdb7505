"""What TDAS costs per sampler step, and how close the sampler is to bare network forwards.

    python -m benchmarks.step_overhead --out runs/step_overhead.json            # CPU: 256 px, nf 16
    python -m benchmarks.step_overhead --config ve/ffhq_ncsnpp_continuous --nf 0 --batch 1,8
                                                                                # GPU: full FFHQ 1024

Random weights (speed does not depend on them). For each batch size it measures, interleaved in
one process: a bare forward (a jitted fori_loop of forwards divided by their count, as DESIGN.md
asks), and the PC sampler's seconds per step with TDAS off and on (DCT zoned filter + space
filter). Reports TDAS's overhead per step and the sampler's step time over (score evaluations per
step) × forward.
"""
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from models import utils as model_utils
from sampling import factory
from tdas import filters as tdas_filters
from tdas.settings import TDAS

flags.DEFINE_string("config", "ve/ffhq_256_ncsnpp_continuous", "Config under configs/.")
flags.DEFINE_integer("nf", 16, "Network width (model.nf); 0 keeps the config's.")
flags.DEFINE_list("batch", ["1"], "Batch sizes.")
flags.DEFINE_integer("steps", 4, "Sampler steps per timed call.")
flags.DEFINE_integer("repeats", 3, "Timed repeats of each variant (interleaved); the minimum "
                     "is reported.")
flags.DEFINE_string("out", "step_overhead.json", "JSON output.")
flags.DEFINE_enum("precision", "highest", ["default", "high", "highest"],
                  "jax_default_matmul_precision (GPUs run float32 convolutions as TF32 under "
                  "'default').")
FLAGS = flags.FLAGS


def _time(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(config, batch, steps, repeats):
  """Returns dict(forward, step_vanilla, step_tdas, ...) in seconds for one batch size."""
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

  config.sampling.num_steps = steps
  sampler = factory.build(config, shape, model)
  freq = tdas_filters.frequency_filter(shape[1:], 0.4, 0.455, 0.955, 0.878)
  space = tdas_filters.space_filter(np.random.RandomState(0).uniform(0.2, 0.8, shape[1:]))
  tdas = TDAS.from_arrays(space=jax.device_put(space), freq=jax.device_put(freq))
  rng = jax.random.PRNGKey(2)
  variants = {
      "forward": lambda: forwards(variables, x),
      "step_vanilla": lambda: sampler.sample(rng, variables, None),
      "step_tdas": lambda: sampler.sample(rng, variables, tdas),
  }
  compile_seconds = {name: _time(fn) for name, fn in variants.items()}  # first call compiles
  best = {name: float("inf") for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      best[name] = min(best[name], _time(fn))
  per_call = {name: seconds / steps for name, seconds in best.items()}
  evaluations = sampler.nfe // steps
  return dict(batch=batch, steps=steps, evaluations_per_step=evaluations,
              forward=per_call["forward"], step_vanilla=per_call["step_vanilla"],
              step_tdas=per_call["step_tdas"],
              tdas_overhead=per_call["step_tdas"] / per_call["step_vanilla"] - 1.0,
              sampler_over_forwards=per_call["step_vanilla"] / (evaluations * per_call["forward"]),
              compile_seconds=compile_seconds)


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", FLAGS.precision)
  config = importlib.import_module("configs." + FLAGS.config.replace("/", ".")).get_config()
  if FLAGS.nf:
    config.model.nf = FLAGS.nf
  rows = [measure(config, int(b), FLAGS.steps, FLAGS.repeats) for b in FLAGS.batch]
  result = dict(config=FLAGS.config, nf=config.model.nf, precision=FLAGS.precision, image_size=config.data.image_size,
                device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
                rows=rows)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{FLAGS.config} at {config.data.image_size} px, nf {config.model.nf}, on "
        f"{result['device']}, matmul precision {FLAGS.precision}")
  print("| batch | forward (s) | step vanilla (s) | step TDAS (s) | TDAS overhead | "
        "step / (evals x forward) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch']} | {r['forward']:.4f} | {r['step_vanilla']:.4f} | {r['step_tdas']:.4f} "
          f"| {100 * r['tdas_overhead']:+.1f} % | {r['sampler_over_forwards']:.3f} |")


if __name__ == "__main__":
  app.run(main)
