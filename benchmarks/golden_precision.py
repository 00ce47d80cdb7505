"""Golden forward passes on the current backend at JAX's default and at 'highest' precision.

    python -m benchmarks.golden_precision

On GPUs XLA may run float32 convolutions and matmuls in TF32 by default; the released networks
are matched to 1e-4 only at full float32. Prints the relative error (max abs error / max abs
output) of each golden case both ways, and the forward time of each.
"""
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from reference_cases import GOLDEN_CASES, golden_case, relative_error  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import utils as model_utils  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  print(f"device: {jax.devices()[0].device_kind}")
  print("| case | precision | relative error | forward (ms) |")
  print("|---|---|---|---|")
  for name in GOLDEN_CASES:
    case = golden_case(name)
    model = model_utils.create_model(case["config"])
    for precision in ("default", "highest"):
      with jax.default_matmul_precision(precision):
        apply = jax.jit(lambda v, x, t: model.apply(v, x, t, train=False))
        y = np.asarray(apply(case["variables"], case["x"], case["labels"]))
        start = time.perf_counter()
        for _ in range(10):
          jax.block_until_ready(apply(case["variables"], case["x"], case["labels"]))
        ms = (time.perf_counter() - start) / 10 * 1e3
      print(f"| {name} | {precision} | {relative_error(y, case['y']):.2e} | {ms:.2f} |")


if __name__ == "__main__":
  main()
