"""Compiled forward passes shared across test modules, so each golden network compiles once."""
import functools

import jax
import numpy as np

from models import utils as model_utils
from reference_cases import golden_case


@functools.lru_cache(maxsize=None)
def _jitted_apply(case_name):
  model = model_utils.create_model(golden_case(case_name)["config"])
  return jax.jit(lambda variables, x, labels: model.apply(variables, x, labels, train=False))


def golden_forward(case_name, variables=None):
  """Output (B, H, W, C) of golden case `case_name`'s network on its input, with `variables`
  (default: the golden variables)."""
  case = golden_case(case_name)
  variables = case["variables"] if variables is None else variables
  return np.asarray(_jitted_apply(case_name)(variables, case["x"], case["labels"]))
