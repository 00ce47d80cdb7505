"""Reading released score_sde checkpoints (SEMANTICS.md §4).

A released checkpoint is one flax-msgpack file `<workdir>/checkpoints/checkpoint_<n>` holding the
training state `{step, optimizer{target, state}, lr, model_state, ema_rate, params_ema, rng}`.
Sampling uses the EMA weights: `variables = {'params': params_ema, **model_state}`;
`optimizer.target` (the raw weights) is never used.
"""
import os
import re
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")
_MAX_LISTED_DIFFERENCES = 8


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or that does not fit the config's model."""


def list_checkpoints(directory: str) -> Dict[int, str]:
  """{n: path} of every `checkpoint_<n>` file directly inside `directory`."""
  found = {}
  for name in os.listdir(directory):
    match = _CHECKPOINT_NAME.match(name)
    if match and os.path.isfile(os.path.join(directory, name)):
      found[int(match.group(1))] = os.path.join(directory, name)
  return found


def find_checkpoint(path: str, step: Optional[int] = None) -> str:
  """Resolves `path` to one checkpoint file.

  Args:
    path: a checkpoint file, a folder of `checkpoint_<n>` files, or a workdir holding
      `checkpoints/checkpoint_<n>`.
    step: which n to take from a folder; None or 0 = the newest.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Checkpoint path {path!r} does not exist. Put a released score_sde checkpoint at "
        "<workdir>/checkpoints/checkpoint_<n> (or pass the file itself).")
  if os.path.isfile(path):
    return path
  folder = os.path.join(path, "checkpoints")
  folders = [folder, path] if os.path.isdir(folder) else [path]
  for candidate in folders:
    found = list_checkpoints(candidate)
    if found:
      if not step:
        return found[max(found)]
      if step not in found:
        raise FileNotFoundError(f"There is no checkpoint_{step} in {candidate!r}; it holds "
                                f"steps {sorted(found)}.")
      return found[step]
  raise FileNotFoundError(
      f"No checkpoint_<n> file in {' or '.join(repr(f) for f in folders)}. A released score_sde "
      "checkpoint belongs at <workdir>/checkpoints/checkpoint_<n>.")


def read_state(path: str) -> dict:
  """The raw state dict of a flax-msgpack checkpoint file, with a clear error for bad files."""
  size = os.path.getsize(path)
  if size == 0:
    raise CheckpointError(f"Checkpoint file {path!r} is empty.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    state = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types for corrupt input.
    raise CheckpointError(
        f"Checkpoint file {path!r} ({size} bytes) is not a readable flax msgpack file (truncated "
        f"or another format?): {type(e).__name__}: {e}") from e
  if not isinstance(state, dict):
    raise CheckpointError(f"Checkpoint file {path!r} holds a {type(state).__name__}, not a "
                          "score_sde training state.")
  return state


def _flatten(tree) -> Dict[str, np.ndarray]:
  if not tree:
    return {}
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def upgrade_legacy_group_norm(params):
  """Reshapes flax-0.3 GroupNorm `scale`/`bias` leaves from (1, 1, 1, C) to (C,).

  Only leaves named `GroupNorm_<k>/scale` or `.../bias` with exactly that legacy shape change;
  everything else is returned untouched.
  """
  flat = traverse_util.flatten_dict(params)
  upgraded = {}
  for key, value in flat.items():
    is_group_norm_leaf = (len(key) >= 2 and re.match(r"^GroupNorm_\d+$", key[-2])
                          and key[-1] in ("scale", "bias"))
    shape = np.shape(value)
    if is_group_norm_leaf and len(shape) == 4 and shape[:3] == (1, 1, 1):
      value = np.reshape(value, shape[-1:])
    upgraded[key] = value
  return traverse_util.unflatten_dict(upgraded)


def expected_variable_shapes(config) -> Dict[str, Tuple[int, ...]]:
  """{'params/Conv_0/kernel': shape, ...} of the model `config` builds (no compute, eval_shape)."""
  from models import utils as model_utils  # pylint: disable=g-import-not-at-top
  model = model_utils.create_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  continuous = model_utils.uses_continuous_labels(config)
  labels = jnp.zeros((1,), jnp.float32 if continuous else jnp.int32)
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(
      lambda: model.init({"params": rng, "dropout": rng}, x, labels, train=False))
  return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def check_variables(variables, config, source: str = "variables") -> None:
  """Raises CheckpointError listing the first differences between `variables` and the model."""
  expected = expected_variable_shapes(config)
  actual = {k: tuple(np.shape(v)) for k, v in _flatten(variables).items()}
  missing = sorted(set(expected) - set(actual))
  extra = sorted(set(actual) - set(expected))
  misshaped = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
  if not (missing or extra or misshaped):
    return
  lines = []
  for title, keys, show in (
      ("missing", missing, lambda k: f"{k} {expected[k]}"),
      ("unexpected", extra, lambda k: f"{k} {actual[k]}"),
      ("wrong shape", misshaped, lambda k: f"{k}: checkpoint {actual[k]}, model {expected[k]}")):
    if keys:
      listed = ", ".join(show(k) for k in keys[:_MAX_LISTED_DIFFERENCES])
      more = f" (+{len(keys) - _MAX_LISTED_DIFFERENCES} more)" if len(
          keys) > _MAX_LISTED_DIFFERENCES else ""
      lines.append(f"  {len(keys)} {title}: {listed}{more}")
  raise CheckpointError(
      f"{source} does not fit the model of config.model.name={config.model.name!r} "
      f"(image_size={config.data.image_size}):\n" + "\n".join(lines))


def load_score_sde(path: str, config=None, step: Optional[int] = None):
  """Loads the EMA weights of a released score_sde checkpoint.

  Args:
    path: a checkpoint file, or a workdir / folder holding `checkpoint_<n>` files.
    config: if given, the loaded tree must equal the variable tree of the model it builds.
    step: the n of `checkpoint_<n>` to take from a folder; None or 0 = the newest.

  Returns:
    (variables, step): `variables = {'params': params_ema, **model_state}` as numpy arrays, and the
    training step stored in the file.
  """
  file = find_checkpoint(path, step)
  state = read_state(file)
  missing = [k for k in ("params_ema", "step") if k not in state]
  if missing:
    raise CheckpointError(f"Checkpoint file {file!r} lacks {missing}: it is not a score_sde "
                          f"training state (top-level keys: {sorted(state)}).")
  variables = {"params": upgrade_legacy_group_norm(state["params_ema"])}
  variables.update(state.get("model_state") or {})
  if config is not None:
    check_variables(variables, config, source=f"Checkpoint {file!r}")
  return variables, int(np.asarray(state["step"]))
