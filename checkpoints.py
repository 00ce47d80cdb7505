"""Reading released score_sde checkpoints (docs/numerics.md §4).

A released checkpoint is one flax-msgpack file `<workdir>/checkpoints/checkpoint_<n>` holding the
training state `{step, optimizer{target, state}, lr, model_state, ema_rate, params_ema, rng}`.
Sampling uses the EMA weights: `variables = {'params': params_ema, **model_state}`;
`optimizer.target` (the raw weights) is never used.

The PyTorch release (score_sde_pytorch) saves `<workdir>/checkpoints/checkpoint_<n>.pth` with
`torch.save`: `{model: state dict ('module.'-prefixed), ema: {decay, num_updates, shadow_params},
optimizer, step}`. `load_score_sde_pytorch` reads those without PyTorch (see `pytorch_io` and
`models/torch_names.py`); `load_checkpoint` picks the loader from the file found.

`--mode train` writes this project's own checkpoints with orbax: `checkpoint_<n>/` folders whose
`variables` item has the same `{'params': params_ema, **model_state}` tree (see the end of this
file); `find_checkpoint` and `load_checkpoint` take them like the released files.

A diffusers-format NCSN++ folder (the `google/ncsnpp-*` hub models: `config.json` and
`diffusion_pytorch_model.safetensors` or `.bin`) is taken as it is: `load_diffusers` reads it
through `diffusers_io` and pairs its tensors by name (`models/diffusers_ncsnpp.py`).
"""
import os
import re
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import serialization, traverse_util

from atomic_io import atomic_write
from models import utils as model_utils
from errors import MissingFileError, UserError

_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")
_PYTORCH_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)\.pth$")
_PYTORCH_SUFFIXES = (".pth", ".pt")
_MAX_LISTED_DIFFERENCES = 8


class CheckpointError(UserError):
  """A checkpoint that cannot be read, or that does not fit the config's model."""


def list_checkpoints(directory: str) -> Dict[int, str]:
  """{n: path} of every `checkpoint_<n>` directly inside `directory`: released msgpack files and
  this project's finished orbax checkpoints (folders; unfinished ones are never listed)."""
  found = {}
  for name in os.listdir(directory):
    match = _CHECKPOINT_NAME.match(name)
    path = os.path.join(directory, name)
    if match and (os.path.isfile(path) or is_orbax_checkpoint(path)):
      found[int(match.group(1))] = path
  return found


def list_pytorch_checkpoints(directory: str) -> Tuple[Dict[int, str], list]:
  """PyTorch checkpoints directly inside `directory`: ({n: path} of `checkpoint_<n>.pth` files,
  sorted paths of the other `*.pth` files, whose step the name does not tell)."""
  numbered, other = {}, []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not (name.endswith(".pth") and os.path.isfile(path)):
      continue
    match = _PYTORCH_CHECKPOINT_NAME.match(name)
    if match:
      numbered[int(match.group(1))] = path
    else:
      other.append(path)
  return numbered, other


def find_checkpoint(path: str, step: Optional[int] = None) -> str:
  """Resolves `path` to one checkpoint file.

  Args:
    path: a checkpoint file, an orbax checkpoint folder written by `--mode train`, a folder of
      checkpoints, or a workdir holding `checkpoints/`. A folder is searched for the JAX release's
      (or this project's training) `checkpoint_<n>` and score_sde_pytorch's
      `checkpoint_<n>.pth` (the msgpack file wins where both exist for one n); a single other
      `*.pth` file (e.g. `checkpoint.pth`) is taken when there are no numbered files.
    step: which n to take from a folder; None or 0 = the newest.
  """
  import diffusers_io  # pylint: disable=g-import-not-at-top
  if diffusers_io.is_diffusers_path(path):
    return path  # a diffusers model folder (or its weight file) holds one set of weights
  if not os.path.exists(path):
    raise MissingFileError(
        f"Checkpoint path {path!r} does not exist. Put a released score_sde checkpoint at "
        "<workdir>/checkpoints/checkpoint_<n> (or a score_sde_pytorch one at "
        "<workdir>/checkpoints/checkpoint_<n>.pth), or pass the file itself.")
  if os.path.isfile(path) or is_orbax_checkpoint(path):
    return path
  folder = os.path.join(path, "checkpoints")
  folders = [folder, path] if os.path.isdir(folder) else [path]
  for candidate in folders:
    found = list_checkpoints(candidate)
    pytorch_numbered, pytorch_other = list_pytorch_checkpoints(candidate)
    for n, file in pytorch_numbered.items():
      found.setdefault(n, file)
    if found:
      if not step:
        skipped = unfinished_checkpoints(candidate)
        if skipped:
          logging.warning("Skipping %s in %s: unfinished (a save cut short); using %s.",
                          ", ".join(skipped), candidate, os.path.basename(found[max(found)]))
        return found[max(found)]
      if step not in found:
        raise MissingFileError(f"There is no checkpoint_{step} in {candidate!r}; it holds "
                                f"steps {sorted(found)}.")
      return found[step]
    if pytorch_other:
      if len(pytorch_other) > 1:
        raise MissingFileError(
            f"{candidate!r} holds several PyTorch checkpoints whose names give no step "
            f"({', '.join(os.path.basename(p) for p in pytorch_other)}); pass the file itself.")
      if step:
        raise MissingFileError(f"There is no checkpoint_{step} in {candidate!r}; it holds only "
                                f"{os.path.basename(pytorch_other[0])!r}.")
      return pytorch_other[0]
  raise MissingFileError(
      f"No checkpoint_<n> file (nor *.pth) in {' or '.join(repr(f) for f in folders)}. A "
      "released score_sde checkpoint belongs at <workdir>/checkpoints/checkpoint_<n>, a "
      "score_sde_pytorch one at <workdir>/checkpoints/checkpoint_<n>.pth; `--mode train` writes "
      "its own there too.")


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


def is_pytorch_checkpoint(path: str) -> bool:
  """Whether `path` is a score_sde_pytorch (`torch.save`) file rather than a flax msgpack one:
  a `.pth`/`.pt` name, or contents that start like a zip archive or a protocol-2 pickle."""
  import pytorch_io  # pylint: disable=g-import-not-at-top
  return path.endswith(_PYTORCH_SUFFIXES) or pytorch_io.looks_like_pytorch_file(path)


def load_checkpoint(path: str, config, step: Optional[int] = None, use_ema: bool = True):
  """Loads the sampling (EMA) weights of either release's checkpoint.

  Args:
    path: a checkpoint file, or a workdir / folder holding `checkpoint_<n>` or `*.pth` files
      (see `find_checkpoint`), or a diffusers NCSN++ folder (see `load_diffusers`).
    config: the config whose model the weights must fit.
    step: the n to take from a folder; None or 0 = the newest.
    use_ema: PyTorch files (score_sde_pytorch, ermongroup NCSNv2): the EMA weights (what their
      samplers use) or, False, the raw training weights. NCSN v1 keeps one set.
  Returns:
    (variables, step) as `load_score_sde` / `load_score_sde_pytorch` / `load_trained` return them.
  """
  import diffusers_io  # pylint: disable=g-import-not-at-top
  file = find_checkpoint(path, step)
  if diffusers_io.is_diffusers_path(file):
    return load_diffusers(file, config)
  if is_orbax_checkpoint(file):
    return load_trained(file, config)
  if is_pytorch_checkpoint(file):
    return load_score_sde_pytorch(file, config, use_ema=use_ema)
  return load_score_sde(file, config=config)


def checkpoint_location(config, workdir: str) -> Tuple[str, int]:
  """Where a mode's checkpoint is read from: `sampling.checkpoint_dir` or <workdir>/checkpoints,
  and `sampling.checkpoint_step` (0 = the newest)."""
  directory = config.sampling.get("checkpoint_dir", "") or os.path.join(workdir, "checkpoints")
  return directory, int(config.sampling.get("checkpoint_step", 0))


def load_variables(config, workdir: str):
  """The network's sampling variables and where they came from: (variables, source).

  Learned networks load the configured checkpoint (source: its absolute path); a model with
  `variables_from_config` (the analytic Gaussian) builds them from the config.
  """
  variables_from_config = getattr(model_utils.get_model(config.model.name),
                                  "variables_from_config", None)
  if variables_from_config is not None:
    return variables_from_config(config), f"{config.model.name} (built from the config)"
  directory, step = checkpoint_location(config, workdir)
  path = find_checkpoint(directory, step)
  variables, step = load_checkpoint(path, config)
  logging.info("Loaded %s (step %d).", path, step)
  return variables, os.path.abspath(path)


def _listing(title: str, items, limit: int = _MAX_LISTED_DIFFERENCES) -> str:
  items = list(items)
  more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
  return f"  {len(items)} {title}: " + "; ".join(items[:limit]) + more


ERMONGROUP_PREFIX = "ermongroup_"


def _tensor_dict(value) -> bool:
  return (isinstance(value, dict) and bool(value)
          and all(isinstance(v, np.ndarray) for v in value.values()))


def _read_ermongroup_list(path: str, state: list) -> dict:
  """The list an ermongroup runner saves, as the dict `read_pytorch_state` returns.

  NCSN (ermongroup/ncsn `anneal_runner.py`): [state_dict, optimizer]; NCSNv2 (ermongroup/ncsnv2
  `ncsn_runner.py`): [state_dict, optimizer, epoch, step] plus the EMA shadow {name: tensor}
  (names without 'module.') when the config has `model.ema`.
  """
  if len(state) not in (2, 4, 5) or not _tensor_dict(state[0]):
    raise CheckpointError(
        f"PyTorch file {path!r} holds a list of {len(state)} items; an ermongroup runner's "
        "checkpoint is [state_dict, optimizer] (NCSN) or [state_dict, optimizer, epoch, step"
        "(, ema_shadow)] (NCSNv2), starting with a state dict of tensors.")
  if len(state) == 2:
    return dict(layout="ermongroup_ncsn", model=state[0], ema=None, step=-1)
  try:
    step = int(np.asarray(state[3]))
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"PyTorch file {path!r}: item 3 (the step) is {state[3]!r}, not an "
                          "integer.") from e
  shadow = state[4] if len(state) == 5 else None
  if shadow is not None and not _tensor_dict(shadow):
    raise CheckpointError(f"PyTorch file {path!r}: item 4 (the EMA shadow) is not a dict of "
                          "tensors.")
  return dict(layout="ermongroup_ncsnv2", model=state[0], ema=shadow, step=step)


def read_pytorch_state(path: str) -> dict:
  """A PyTorch checkpoint of either layout, as one dict.

  score_sde_pytorch saves a dict with `model`, `ema` (`shadow_params`), `optimizer`, `step`; the
  ermongroup NCSN / NCSNv2 runners save a list (see `_read_ermongroup_list`).

  Returns {'layout': 'score_sde_pytorch' | 'ermongroup_ncsn' | 'ermongroup_ncsnv2', 'model':
  {name: array} (the state dict, 'module.' prefix kept), 'ema': score_sde_pytorch's ema dict, the
  NCSNv2 shadow {name: array} or None (no EMA kept), 'step': int (-1: not stored), ...}.
  """
  import pytorch_io  # pylint: disable=g-import-not-at-top
  try:
    state = pytorch_io.load(path)
  except pytorch_io.PyTorchFileError as e:
    raise CheckpointError(f"Checkpoint file {path!r} cannot be read as a PyTorch "
                          f"checkpoint: {e}") from e
  if isinstance(state, (list, tuple)):
    return _read_ermongroup_list(path, list(state))
  if not isinstance(state, dict):
    raise CheckpointError(f"PyTorch file {path!r} holds a {type(state).__name__}, not a "
                          "score_sde_pytorch checkpoint (a dict with model, ema, step) or an "
                          "ermongroup runner's list.")
  missing = [k for k in ("model", "ema", "step") if k not in state]
  if missing:
    raise CheckpointError(
        f"PyTorch file {path!r} lacks {missing}: it is not a score_sde_pytorch checkpoint "
        f"(top-level keys: {sorted(map(str, state))}; expected model, ema, optimizer, step).")
  model, ema = state["model"], state["ema"]
  if not (isinstance(model, dict) and model
          and all(isinstance(v, np.ndarray) for v in model.values())):
    raise CheckpointError(f"PyTorch file {path!r}: 'model' is not a state dict of tensors.")
  if not (isinstance(ema, dict) and isinstance(ema.get("shadow_params"), (list, tuple))
          and all(isinstance(v, np.ndarray) for v in ema["shadow_params"])):
    raise CheckpointError(f"PyTorch file {path!r}: 'ema' lacks a list of tensors "
                          "'shadow_params' (keys: "
                          f"{sorted(map(str, ema)) if isinstance(ema, dict) else type(ema)}).")
  try:
    state["step"] = int(np.asarray(state["step"]))
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"PyTorch file {path!r}: 'step' is {state['step']!r}, not an "
                          "integer.") from e
  state["layout"] = "score_sde_pytorch"
  return state


def _strip_module_prefix(model: dict, path: str) -> Dict[str, np.ndarray]:
  """The state dict without the 'module.' prefix nn.DataParallel adds (all or none may have it)."""
  prefixed = [k.startswith("module.") for k in model]
  if all(prefixed):
    return {k[len("module."):]: v for k, v in model.items()}
  if any(prefixed):
    raise CheckpointError(f"Checkpoint {path!r}: some state-dict names start with 'module.' "
                          "and some do not; it is not one score_sde_pytorch model.")
  return dict(model)


def _ema_source(shadow, model, params_in_order, frozen):
  """({torch key: EMA tensor}, problems): `ema.shadow_params` matched to the parameters.

  score_sde_pytorch's EMA keeps one shadow tensor per trainable parameter, in the order of
  `model.parameters()` (= state-dict order without buffers); parameters created with
  requires_grad=False (the Fourier projection `W`) are left out and keep their model value. A list
  with one entry per parameter, frozen ones included, is accepted too. The alignment is accepted
  only if every shadow tensor has its parameter's shape. Returns (None, problems) otherwise.
  """
  shadow = list(shadow)
  trainable = [k for k in params_in_order if k not in frozen]
  candidates = [(keys, title) for keys, title in ((params_in_order, "parameter"),
                                                   (trainable, "trainable parameter"))
                if len(keys) == len(shadow)]
  if not candidates:
    return None, [f"ema.shadow_params has {len(shadow)} tensors but the state dict has "
                  f"{len(params_in_order)} parameters ({len(trainable)} trainable); they cannot "
                  "be matched"]
  best = None
  for keys, title in candidates:
    wrong = [f"[{i}] {tensor.shape} vs {key} {model[key].shape}"
             for i, (key, tensor) in enumerate(zip(keys, shadow))
             if tensor.shape != model[key].shape]
    if not wrong:
      source = {k: model[k] for k in params_in_order}
      source.update(zip(keys, shadow))
      return source, []
    if best is None or len(wrong) < len(best[2]):
      best = (keys, title, wrong)
  _, title, wrong = best
  return None, [f"ema.shadow_params has {len(shadow)} tensors, one per {title}, but "
                f"{len(wrong)} of them do not have the shape of their parameter: they do not "
                f"follow the model's parameter order (first: {'; '.join(wrong[:3])})"]


def _check_layout_fits(path: str, layout: str, config):
  """A score_sde_pytorch file needs a score_sde config and an ermongroup runner's list an
  ermongroup config (`model.name` 'ermongroup_*'): their networks compute differently."""
  ermongroup_config = str(config.model.name).startswith(ERMONGROUP_PREFIX)
  if layout == "score_sde_pytorch" and ermongroup_config:
    raise CheckpointError(
        f"Checkpoint {path!r} is a score_sde_pytorch checkpoint (a dict with model, ema, step), "
        f"but config.model.name={config.model.name!r} is an ermongroup network, whose files are "
        "the runners' lists: use a score_sde config (configs/ve/ncsn/, configs/ve/ncsnv2/).")
  if layout.startswith(ERMONGROUP_PREFIX) and not ermongroup_config:
    raise CheckpointError(
        f"Checkpoint {path!r} is an ermongroup {layout[len(ERMONGROUP_PREFIX):].upper()} "
        f"runner's checkpoint (a list), but config.model.name={config.model.name!r} is "
        "score_sde's network, which computes differently: use its config under "
        "configs/ermongroup/.")
  expected = {"ermongroup_ncsn": ("ermongroup_ncsn",)}.get(layout)
  if expected and config.model.name not in expected:
    raise CheckpointError(
        f"Checkpoint {path!r} is an NCSN v1 runner's checkpoint ([state_dict, optimizer]), but "
        f"config.model.name={config.model.name!r}: use configs/ermongroup/ncsn_<dataset>.py.")


def _named_ema_source(shadow, model, params_in_order):
  """({torch key: EMA tensor}, problems): NCSNv2's EMA shadow, keyed by parameter name."""
  shadow = {k[len("module."):] if k.startswith("module.") else k: v for k, v in shadow.items()}
  missing = [k for k in params_in_order if k not in shadow]
  extra = [k for k in shadow if k not in model]
  wrong = [f"{k} {shadow[k].shape} vs {model[k].shape}" for k in params_in_order
           if k in shadow and shadow[k].shape != model[k].shape]
  problems = ([f"the EMA shadow lacks {len(missing)} parameters ({_short_list(missing)})"]
              if missing else [])
  problems += [f"the EMA shadow has {len(extra)} names the model lacks ({_short_list(extra)})"
               ] if extra else []
  problems += [f"{len(wrong)} EMA tensors are mis-shaped ({_short_list(wrong)})"] if wrong else []
  if problems:
    return None, problems
  tensors = dict(model)
  tensors.update({k: shadow[k] for k in params_in_order})
  return tensors, []


def _short_list(items, limit=3):
  return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_score_sde_pytorch(path: str, config, use_ema: bool = True):
  """Loads a score_sde_pytorch checkpoint (`torch.save` zip or legacy file) into flax variables.

  Every tensor of the state dict is used exactly once and every flax variable filled exactly once
  (the name and layout rules are in `models/torch_names.py`); the `sigmas` buffer must equal
  `models.utils.get_sigmas(config)`. Anything else is one CheckpointError listing what is missing,
  unmatched or mis-shaped.

  Args:
    path: the `.pth` file, or a workdir / folder holding one (see `find_checkpoint`).
    config: the config whose model (`ncsnpp`, `ddpm`, `ncsnv2_*`) the checkpoint holds.
    use_ema: take the EMA weights (`ema.shadow_params`, what sampling uses); False takes the raw
      training weights (`model`).
  Returns:
    (variables, step): `{'params': {...}}` of numpy arrays shaped and typed as the flax model
    expects, and the training step stored in the file.
  """
  source = "ema" if use_ema else "raw"
  imported = import_score_sde_pytorch(path, config, sources=(source,))
  return imported[source], imported["step"]


def import_score_sde_pytorch(path: str, config, sources=("ema", "raw")) -> dict:
  """`load_score_sde_pytorch` for several weight sets from one read of the file.

  Returns {'ema': variables, 'raw': variables (those in `sources`), 'step': int, 'file': path,
  'state': the file's top-level dict (see `read_pytorch_state`)}.
  """
  from models import torch_names  # pylint: disable=g-import-not-at-top
  file = find_checkpoint(path) if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise MissingFileError(f"Checkpoint file {file!r} does not exist.")
  state = read_pytorch_state(file)
  _check_layout_fits(file, state["layout"], config)
  model = _strip_module_prefix(state["model"], file)
  try:
    plan = torch_names.match(config, list(model))
  except NotImplementedError as e:
    raise CheckpointError(f"Checkpoint {file!r} cannot be imported for config.model.name="
                          f"{config.model.name!r}: {e}") from e

  # What does not depend on the weight set: names, buffers, leftovers.
  problems = list(plan.problems)
  missing, unmatched, buffers = [], [], []
  claimed = {}
  for rule in plan.rules:
    if rule.torch_key in claimed:
      problems.append(f"{rule.torch_key} would fill both {claimed[rule.torch_key]} and "
                      f"{rule.flax_path}")
    claimed[rule.torch_key] = rule.flax_path
    if rule.torch_key not in model:
      missing.append(f"{rule.torch_key} {rule.torch_shape} for {rule.flax_path}")
  for key, expected in plan.buffers.items():
    if key not in model:
      buffers.append(f"{key} is absent (the PyTorch network registers it; expected shape "
                     f"{expected.shape})")
    elif model[key].shape != expected.shape or not np.allclose(model[key], expected,
                                                               rtol=1e-6, atol=0):
      buffers.append(
          f"{key} {model[key].shape} differs from models.utils.get_sigmas(config) "
          f"{expected.shape}: config.model.sigma_min/sigma_max/num_scales do not match the "
          "checkpoint")
  for key in model:
    if key not in claimed and key not in plan.buffers:
      unmatched.append(f"{key} {model[key].shape}")

  params_in_order = [k for k in model if k not in plan.buffers]
  frozen = {r.torch_key for r in plan.rules if r.frozen}
  result = {"step": state["step"], "file": file, "state": state}
  for source in sources:
    source_problems = []
    if source == "ema" and state["layout"] == "score_sde_pytorch":
      tensors, source_problems = _ema_source(state["ema"]["shadow_params"], model,
                                             params_in_order, frozen)
    elif source == "ema" and state["ema"] is not None:  # NCSNv2's shadow {name: tensor}
      tensors, source_problems = _named_ema_source(state["ema"], model, params_in_order)
    elif source == "ema":
      # NCSN v1 (and NCSNv2 trained without EMA) keep one weight set: the runner samples with it.
      logging.info("Checkpoint %s keeps no EMA weights; using its only weights.", file)
      tensors = model
    elif source == "raw":
      tensors = model
    else:
      raise UserError(f"Unknown weight set {source!r}; choose 'ema' or 'raw'.")
    misshaped, flat = [], {}
    for rule in plan.rules:
      if tensors is None or rule.torch_key not in tensors:  # already reported
        continue
      value = torch_names.to_flax(tensors[rule.torch_key], rule.layout, rule.flax_shape)
      if value is None:
        misshaped.append(f"{rule.torch_key}: file {tensors[rule.torch_key].shape}, model expects "
                         f"{rule.torch_shape} for {rule.flax_path} {rule.flax_shape}")
        continue
      flat[tuple(rule.flax_path.split("/"))] = np.asarray(value, dtype=rule.flax_dtype)
    listed = [(title, items) for title, items in (
        ("structural problems", problems + source_problems),
        ("missing from the file", missing), ("mis-shaped", misshaped),
        ("unmatched tensors in the file", unmatched), ("buffer mismatches", buffers)) if items]
    if listed:
      raise CheckpointError(
          f"Checkpoint {file!r} does not fit the model of config.model.name="
          f"{config.model.name!r} (image_size={config.data.image_size}, {source} weights):\n"
          + "\n".join(_listing(title, items) for title, items in listed))
    result[source] = traverse_util.unflatten_dict(flat)
  return result


def load_diffusers(path: str, config):
  """Loads a diffusers-format NCSN++ (a `google/ncsnpp-*` hub model) into flax variables.

  Args:
    path: the model folder (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`; the
      `.safetensors` file when both exist), a `save_pretrained` folder holding it as `unet/`, or
      one of the two weight files.
    config: the config whose NCSN++ the weights must fit, e.g. `configs/diffusers_ncsnpp.py`'s.
      Its network fields must agree with what the folder's `config.json` translates to
      (`models.diffusers_ncsnpp.NETWORK_FIELDS`), since some differences (data.centered,
      fourier_scale, ...) would not show in the weights' shapes.
  Returns:
    (variables, 0): `{'params': {...}}` of numpy arrays; diffusers keeps no training step.
  Raises:
    CheckpointError: the config does not describe the folder's network, or the tensors do not
      fill the variables one to one (one message lists everything missing, unmatched or
      mis-shaped). MissingFileError / DiffusersFormatError: a missing or unreadable file.
  """
  import diffusers_io  # pylint: disable=g-import-not-at-top
  from models import diffusers_ncsnpp, torch_names  # pylint: disable=g-import-not-at-top
  folder, file = diffusers_io.model_folder(path)
  file = file or diffusers_io.weight_file(folder)
  config_file = os.path.join(folder, diffusers_io.CONFIG_NAME)
  unet = diffusers_io.read_json(config_file, "diffusers model config")
  fields = diffusers_ncsnpp.score_sde_fields(unet, {}, source=config_file)
  differences = diffusers_ncsnpp.network_differences(config, fields)
  if differences:
    raise CheckpointError(
        f"The diffusers model {folder!r} is not the network of this config (use "
        f"--config configs/diffusers_ncsnpp.py:{folder}):\n"
        + _listing("differing fields", differences))
  try:
    rules = diffusers_ncsnpp.match(config)
  except NotImplementedError as e:
    raise CheckpointError(f"The diffusers model {folder!r} cannot be loaded into "
                          f"config.model.name={config.model.name!r}: {e}") from e
  tensors, problems = diffusers_ncsnpp.canonical_tensors(diffusers_io.read_weights(file))
  missing, misshaped, flat = [], [], {}
  for rule in rules:
    if rule.torch_key not in tensors:
      missing.append(f"{rule.torch_key} {rule.torch_shape} for {rule.flax_path}")
      continue
    value = torch_names.to_flax(tensors[rule.torch_key], rule.layout, rule.flax_shape)
    if value is None:
      misshaped.append(f"{rule.torch_key}: file {tensors[rule.torch_key].shape}, model expects "
                       f"{rule.torch_shape} for {rule.flax_path} {rule.flax_shape}")
      continue
    flat[tuple(rule.flax_path.split("/"))] = np.asarray(value, dtype=rule.flax_dtype)
  claimed = {rule.torch_key for rule in rules}
  unmatched = [f"{key} {tensors[key].shape}" for key in tensors if key not in claimed]
  listed = [(title, items) for title, items in (
      ("problems", problems), ("missing from the file", missing), ("mis-shaped", misshaped),
      ("unmatched tensors in the file", unmatched)) if items]
  if listed:
    raise CheckpointError(
        f"The diffusers weights {file!r} do not fit the model of config.model.name="
        f"{config.model.name!r} (image_size={config.data.image_size}; does config.json match "
        "the weights?):\n" + "\n".join(_listing(title, items) for title, items in listed))
  return traverse_util.unflatten_dict(flat), 0


# ---------------------------------------------------------------------------------------------
# This project's own training checkpoints (orbax), written by `--mode train`.
# ---------------------------------------------------------------------------------------------
# <workdir>/checkpoints/checkpoint_<n>/ (snapshot n, every training.snapshot_freq steps, all kept)
# and <workdir>/checkpoints-meta/checkpoint_<step>/ (pre-emption, every
# training.snapshot_freq_for_preemption steps, the newest kept) are orbax checkpoint folders with
# three items:
#   variables: {'params': params_ema, **model_state}: what sampling loads (a released file's tree)
#   train:     {'step', 'params', 'opt_state', 'rng'}: the rest of the training state
#   meta:      JSON {'step', 'model', 'image_size', ...}
# All arrays are saved as host (numpy) copies, so a checkpoint restores on any number of devices.
TRAIN_ITEMS = ("variables", "train", "meta")


def is_orbax_checkpoint(path: str) -> bool:
  """Whether `path` is a finished orbax training checkpoint folder (unfinished saves live in
  temporary folders under other names until orbax renames them)."""
  return (os.path.isdir(path) and os.path.isdir(os.path.join(path, "variables"))
          and os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")))


def train_checkpoint_manager(directory: str, max_to_keep: Optional[int] = None):
  """An orbax CheckpointManager writing `directory/checkpoint_<n>/` with the items TRAIN_ITEMS;
  `max_to_keep` None keeps every checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, step_prefix="checkpoint",
                                         create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=TRAIN_ITEMS)


def host_copy(tree):
  """numpy copies of a pytree of (replicated) arrays, also on hosts that see only their shards."""

  def copy(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.array(x, copy=True)  # never a view of a device buffer a later step may reuse

  return jax.tree_util.tree_map(copy, tree)


def save_training(manager, n: int, variables, train, meta: dict) -> None:
  """Starts writing checkpoint_<n> (asynchronously: `manager.wait_until_finished()` completes it;
  orbax renames the folder into place only when it is whole, so a kill never leaves a half
  checkpoint under that name).

  Args:
    manager: from `train_checkpoint_manager`.
    n: the checkpoint number.
    variables: {'params': params_ema, **model_state}.
    train: {'step': int scalar, 'params': ..., 'opt_state': optax state, 'rng': key}.
    meta: JSON-serialisable facts (step, model name, ...).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager.save(int(n), args=ocp.args.Composite(
      variables=ocp.args.StandardSave(host_copy(variables)),
      train=ocp.args.StandardSave(host_copy(train)),
      meta=ocp.args.JsonSave(meta)))


def unfinished_checkpoints(directory: str) -> list:
  """Names of the `checkpoint_<n>...` entries of `directory` that are not finished orbax
  checkpoints (a save cut short by a kill or a full disk), sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory)
                if name.startswith("checkpoint_") and os.path.isdir(os.path.join(directory, name))
                and not is_orbax_checkpoint(os.path.join(directory, name)))


def _shape_differences(restored, target) -> list:
  """'path: saved shape -> expected shape' for every leaf whose shape differs, and the leaves
  only one of the two trees has."""
  saved = {"/".join(map(str, k)): np.shape(v)
           for k, v in traverse_util.flatten_dict(_plain(restored)).items()}
  wanted = {"/".join(map(str, k)): np.shape(v)
            for k, v in traverse_util.flatten_dict(_plain(target)).items()}
  lines = [f"{k}: {saved[k]} -> {wanted[k]}" for k in sorted(saved.keys() & wanted.keys())
           if tuple(saved[k]) != tuple(wanted[k])]
  lines += [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - wanted.keys())]
  lines += [f"{k}: missing from the checkpoint" for k in sorted(wanted.keys() - saved.keys())]
  return lines


def _plain(tree):
  """A pytree as nested dicts keyed by its path entries (for comparing two trees' leaves)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat = {tuple(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path):
          leaf for path, leaf in leaves}
  return traverse_util.unflatten_dict(flat) if flat else {}


# Words in the errors tensorstore and orbax raise (as ValueError) for files that do not read.
_DAMAGED_FILE_WORDS = ("tensorstore", "DATA_LOSS", "Error reading", "Error opening", "corrupt",
                       "checksum", "Unterminated", "Expecting value", "OUT_OF_RANGE")


def _damaged_files_error(error: Exception) -> bool:
  import json  # pylint: disable=g-import-not-at-top
  return isinstance(error, json.JSONDecodeError) or any(
      word in str(error) for word in _DAMAGED_FILE_WORDS)


def _damaged(path: str, manager, error: Exception) -> "CheckpointError":
  return CheckpointError(
      f"Training checkpoint {path!r} cannot be read ({type(error).__name__}: "
      f"{' '.join(str(error).split())[:200]}): its files are damaged; move that folder out of "
      f"{str(manager.directory)!r} to resume from the one before it, or train in another "
      "--workdir.")


def restore_training(manager, n: int, variables, train):
  """(variables, train, meta) of checkpoint_<n>, as numpy trees shaped like the targets
  `variables` and `train` (e.g. a fresh state of the same config).

  A checkpoint of another network (other shapes or layers) or with damaged files raises
  CheckpointError naming its folder and the fix."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(str(manager.directory), f"checkpoint_{n}")
  workdir = os.path.dirname(os.path.abspath(str(manager.directory)))
  try:
    restored = manager.restore(int(n), args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(host_copy(variables)),
        train=ocp.args.StandardRestore(host_copy(train)),
        meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    if _damaged_files_error(e):
      raise _damaged(path, manager, e) from e
    raise CheckpointError(
        f"Training checkpoint {path!r} does not fit this config's training state (another "
        f"model, optimiser or image size: {' '.join(str(e).split())[:300]}): train this config "
        f"in another --workdir (not {workdir!r}), or restore the config it was trained "
        "with.") from e
  except Exception as e:  # pylint: disable=broad-except  (orbax / tensorstore / asyncio errors)
    raise _damaged(path, manager, e) from e
  lines = (_shape_differences(restored.variables, variables)
           + _shape_differences(restored.train, train))
  if lines:
    shown = "; ".join(lines[:4]) + (f"; +{len(lines) - 4} more" if len(lines) > 4 else "")
    raise CheckpointError(
        f"Training checkpoint {path!r} holds another network than this config's ({shown}): "
        f"train this config in another --workdir (not {workdir!r}), or restore the config it "
        "was trained with.")
  return restored.variables, restored.train, restored.meta


def released_state_from_trained(path: str, config) -> dict:
  """The EMA part of a `--mode train` checkpoint folder as a released-format state:
  {step, params_ema, model_state, ema_rate (the config's)} (no raw weights, no Adam state)."""
  variables, step = load_trained(path, config)
  return {"step": step, "params_ema": variables["params"],
          "model_state": {k: v for k, v in variables.items() if k != "params"},
          "ema_rate": float(config.model.ema_rate)}


def write_released_checkpoint(state: dict, output_dir: str, config, overwrite: bool = False) -> str:
  """Writes a released-format `state` as `<output_dir>/checkpoints/checkpoint_<step>` (flax
  msgpack), after checking its EMA tree against `config`'s model (as `load_score_sde` will).
  Returns the path.

  The file appears whole or not at all (`atomic_io`); an existing `checkpoint_<step>` is replaced
  only with `overwrite`.
  """
  step = int(np.asarray(state["step"]))
  folder = os.path.join(output_dir, "checkpoints")
  target = os.path.join(folder, f"checkpoint_{step}")
  if os.path.exists(target) and not overwrite:
    raise UserError(f"{target!r} already exists; pass --overwrite to replace it.")
  variables = {"params": upgrade_legacy_group_norm(state["params_ema"]),
               **(state.get("model_state") or {})}
  check_variables(variables, config, source=f"The state for {target!r}")
  with atomic_write(target) as f:
    f.write(serialization.msgpack_serialize(state))
  return target


def load_trained(path: str, config=None):
  """Loads the EMA weights of a `--mode train` checkpoint folder (`.../checkpoint_<n>/`).

  Returns:
    (variables, step): `{'params': params_ema, **model_state}` as numpy arrays, checked against
    `config`'s model when given, and the training step the checkpoint was taken at.
  """
  import json  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not is_orbax_checkpoint(path):
    raise CheckpointError(f"{path!r} is not a finished `--mode train` checkpoint folder (it lacks "
                          "variables/ or _CHECKPOINT_METADATA).")
  try:
    variables = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path),
                                                                "variables"))
  except Exception as e:  # orbax / tensorstore raise many types for damaged folders
    raise CheckpointError(f"Training checkpoint {path!r}: its variables cannot be read: "
                          f"{type(e).__name__}: {e}") from e
  step = 0
  meta_file = os.path.join(path, "meta", "metadata")
  if os.path.isfile(meta_file):
    with open(meta_file) as f:
      step = int(json.load(f).get("step", 0))
  variables = {k: v for k, v in variables.items()}
  if config is not None:
    check_variables(variables, config, source=f"Checkpoint {path!r}")
  return jax.tree_util.tree_map(np.asarray, variables), step
