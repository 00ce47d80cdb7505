"""Readers for the reference cases kept in tests/golden/ (copies of the project's reference data).

- `golden_case(name)`: one released-architecture forward pass (config, variables, x, labels, y).
- `param_tree(name)`: the exact variable tree and parameter count of a released config.
"""
import functools
import glob
import json
import os

import ml_collections
import numpy as np
from flax import traverse_util

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
PARAM_TREE_DIR = os.path.join(GOLDEN_DIR, "param_trees")
GOLDEN_CASES = ("ddpm_small", "ncsnpp_cifar10_positional_small", "ncsnpp_ffhq_small")
PARAM_TREE_NAMES = tuple(sorted(
    os.path.basename(p)[:-len(".json")] for p in glob.glob(os.path.join(PARAM_TREE_DIR, "*.json"))))


def config_from_dict(d) -> ml_collections.ConfigDict:
  """A ConfigDict holding exactly score_sde's own fields, as the reference files list them."""
  return ml_collections.ConfigDict(d)


@functools.lru_cache(maxsize=None)
def golden_case(name):
  """Returns dict(config, variables, x, labels, y) for golden case `name`."""
  with np.load(os.path.join(GOLDEN_DIR, name + ".npz")) as data:
    flat = {tuple(k[len("var:"):].split("/")): data[k] for k in data.files if k.startswith("var:")}
    return dict(
        config=config_from_dict(json.loads(str(data["config_json"]))),
        variables=traverse_util.unflatten_dict(flat),
        x=data["x"], labels=data["t"], y=data["y"])


@functools.lru_cache(maxsize=None)
def param_tree(name):
  """Returns dict(config, num_params, shapes) with shapes {'params/Conv_0/kernel': (3, 3, 3, 128)}."""
  with open(os.path.join(PARAM_TREE_DIR, name + ".json")) as f:
    d = json.load(f)
  shapes = {f"{col}/{path}": tuple(shape)
            for col, tree in d["variables"].items() for path, shape in tree.items()}
  return dict(config=config_from_dict(d["config"]), num_params=d["num_params"], shapes=shapes,
              config_file=d["config_file"])


def relative_error(actual, expected):
  """max|actual - expected| / max|expected| — the agreement measure of the golden cases."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
