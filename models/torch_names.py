"""Where each variable of this project's networks lives in a score_sde_pytorch state dict.

`match(config, torch_keys)` pairs every flax variable of the model `config` builds with one tensor
name of a PyTorch state dict (without the `module.` prefix) and says how its layout changes. The
pairing is derived from the structure of both networks, not from a fixed list of names:

1. The flax module tree is read off one abstract `init` (`jax.eval_shape`, nothing computed), with a
   method interceptor recording the order in which modules are first called (= created, under
   `nn.compact`), each module's class and fields, and its input channel count.
2. Modules are then matched from the root down, by the rule of the flax module's class:
   - `all_modules` (NCSN++/DDPM++ `ncsnpp`, DDPM `ddpm`): PyTorch keeps the network's submodules in
     one `ModuleList` appended in forward order. Its entries that hold parameters (the indices
     present in the state dict, ascending) pair one-to-one with the flax submodules that hold
     parameters, in creation order (modules without parameters, such as FIR resamplers without a
     conv or dropout, exist on one side only and are skipped on both).
   - same names (the U-Net blocks: `ResnetBlock*`, `AttnBlock*`, `Combine`, `Upsample`,
     `Downsample`): the PyTorch port names its attributes like flax names the submodules
     (`GroupNorm_0`, `Conv_1`, `NIN_0`, `Dense_0`, `Conv2d_0`); a lone `Conv_0` may also be called
     `Conv` (some forks of `Combine`).
   - ordered attribute lists (NCSNv2's RefineNet): PyTorch attribute names in forward order
     (`begin_conv`, `res1.0`, ..., `refine1`, ..., `normalizer`, `end_conv`; in a residual block
     `normalize1`, `conv1`, `normalize2`, `conv2`, `shortcut`; in a RefineBlock `adapt_convs.<i>`,
     `msf`, `crp`, `output_convs`; `<i>_<j>_conv` in an RCU; `convs.<i>` in CRP/MSF; `conv` in
     ConvMeanPool), paired with the flax submodules in creation order.
   - leaves (layers holding tensors): see `_LEAF_RULES` — e.g. `Conv.kernel` (KH, KW, I, O) <-
     `weight` (O, I, KH, KW); `Dense.kernel` (I, O) <- `weight` (O, I); `GroupNorm.scale` <-
     `weight`; `NIN.W` (I, O) <- `W` (I, O) unchanged (PyTorch's NIN contracts the channel axis with
     W exactly as flax does); InstanceNorm++ `alpha/gamma/beta` (1, 1, 1, C) <- (C,); the FIR
     `Conv2d.weight` (K, K, I, O) <- `weight` (O, I, K, K) (both frameworks use it as the
     correlation kernel of the fused resampling conv).
3. Buffers: the PyTorch networks register `sigmas` (their noise levels, float64) at the top; it is
   no flax variable and must equal `models.utils.get_sigmas(config)`. No FIR kernel is stored:
   score_sde_pytorch builds it from `config.model.fir_kernel` on every call.

The ermongroup releases (NCSN v1's CondRefineNetDilated, NCSNv2 and its deeper variants) use
the same attribute names; NCSN v1's conditional blocks add `<i>_<j>_norm` before each RCU conv,
`norms.<i>` before each CRP / MSF conv, and its conditional InstanceNorm++ keeps its table as
`embed.weight` (num_classes, 3C) = [gamma | alpha | beta], as flax's `Embed_0/embedding`.

Unsupported: score_sde's NCSN v1 (`ncsn`), whose score_sde_pytorch version cannot run (its
conditional blocks are built with the unconditional normaliser), and any flax module class
without a rule here — both are clear errors naming the class.
"""
import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Tensor layouts: how a PyTorch tensor becomes the flax variable.
CONV = "conv"      # (O, I, KH, KW) -> (KH, KW, I, O)
DENSE = "dense"    # (O, I) -> (I, O)
SAME = "same"      # unchanged
VECTOR = "vector"  # (C,) -> the flax shape, e.g. (C,) or (1, 1, 1, C)

# Flax leaf-module class -> {flax variable name: (PyTorch tensor name, layout)}.
_LEAF_RULES = {
    "Conv": {"kernel": ("weight", CONV), "bias": ("bias", VECTOR)},
    "Conv2d": {"weight": ("weight", CONV), "bias": ("bias", VECTOR)},  # FIR up/down conv
    "Dense": {"kernel": ("weight", DENSE), "bias": ("bias", VECTOR)},
    "GroupNorm": {"scale": ("weight", VECTOR), "bias": ("bias", VECTOR)},
    "NIN": {"W": ("W", SAME), "b": ("b", VECTOR)},
    "GaussianFourierProjection": {"W": ("W", VECTOR)},
    "InstanceNorm2dPlus": {"alpha": ("alpha", VECTOR), "gamma": ("gamma", VECTOR),
                           "beta": ("beta", VECTOR)},
    "VarianceNorm2d": {"scale": ("alpha", VECTOR)},
    "InstanceNorm2d": {"scale": ("weight", VECTOR), "bias": ("bias", VECTOR)},
    "Embed": {"embedding": ("weight", SAME)},
}
# Flax classes whose variables PyTorch creates with requires_grad=False (never trained; the
# score_sde_pytorch EMA leaves them out of `shadow_params`).
FROZEN_CLASSES = ("GaussianFourierProjection",)

_SAME_NAME_CLASSES = ("ResnetBlockBigGANpp", "ResnetBlockDDPMpp", "ResnetBlockDDPM",
                      "AttnBlockpp", "AttnBlock", "Combine", "Upsample", "Downsample")
_ALL_MODULES_CLASSES = ("NCSNpp", "DDPM")

# NCSNv2 networks: PyTorch backbone stages (each a ModuleList of two ResidualBlocks) and refine
# blocks, both in forward order. In the 256 px net `refine31` runs before `refine3`.
_REFINENET_LAYOUTS = {
    "NCSNv2": (("res1", "res2", "res3", "res4"), ("refine1", "refine2", "refine3", "refine4")),
    "NCSNv2_128": (("res1", "res2", "res3", "res4", "res5"),
                   ("refine1", "refine2", "refine3", "refine4", "refine5")),
    "NCSNv2_256": (("res1", "res2", "res3", "res31", "res4", "res5"),
                   ("refine1", "refine2", "refine31", "refine3", "refine4", "refine5")),
}
# The ermongroup releases name their networks' attributes the same way.
_REFINENET_LAYOUTS.update({
    "ErmongroupNCSN": _REFINENET_LAYOUTS["NCSNv2"],
    "ErmongroupNCSNv2": _REFINENET_LAYOUTS["NCSNv2"],
    "ErmongroupNCSNv2Deeper": _REFINENET_LAYOUTS["NCSNv2_128"],
    "ErmongroupNCSNv2Deepest": _REFINENET_LAYOUTS["NCSNv2_256"],
})
# Networks that register no `sigmas` buffer (NCSN v1's output is not divided by sigma).
_NO_SIGMAS_BUFFER = ("ErmongroupNCSN",)
_UNSUPPORTED = {
    "NCSN": "score_sde_pytorch's NCSN v1 ('ncsn') builds its conditional blocks with the "
            "unconditional normaliser and cannot run, so it has no checkpoints to import",
}


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One flax variable and the PyTorch tensor it comes from.

  flax_path: 'params/ResnetBlockBigGANpp_0/Conv_0/kernel'.
  torch_key: 'all_modules.4.Conv_0.weight' (state-dict name without the 'module.' prefix).
  layout: CONV, DENSE, SAME or VECTOR (see `to_flax`).
  flax_shape / flax_dtype: what the model expects.
  frozen: PyTorch does not train it (requires_grad=False), so its EMA may be absent.
  """
  flax_path: str
  torch_key: str
  layout: str
  flax_shape: Tuple[int, ...]
  flax_dtype: Any
  frozen: bool = False

  @property
  def torch_shape(self) -> Tuple[int, ...]:
    """The PyTorch shape that converts to `flax_shape`."""
    return torch_shape(self.layout, self.flax_shape)


@dataclasses.dataclass
class Plan:
  """Result of `match`: `rules` (one per flax variable, in flax creation order), the expected
  `buffers` {torch_key: array}, and `problems` (structural mismatches found while pairing)."""
  rules: List[TensorRule]
  buffers: Dict[str, np.ndarray]
  problems: List[str]


def torch_shape(layout: str, flax_shape: Sequence[int]) -> Tuple[int, ...]:
  flax_shape = tuple(flax_shape)
  if layout == CONV:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if layout == DENSE:
    i, o = flax_shape
    return (o, i)
  if layout == VECTOR:
    return (int(np.prod(flax_shape, dtype=np.int64)),)
  return flax_shape


def to_flax(array: np.ndarray, layout: str, flax_shape: Sequence[int]) -> Optional[np.ndarray]:
  """The flax variable made from PyTorch tensor `array`, or None if the shapes do not fit.

  CONV: (O, I, KH, KW) -> (KH, KW, I, O); DENSE: (O, I) -> (I, O); VECTOR: (C,) -> flax_shape;
  SAME: unchanged.
  """
  array = np.asarray(array)
  if array.shape != torch_shape(layout, flax_shape):
    return None
  if layout == CONV:
    return np.transpose(array, (2, 3, 1, 0))
  if layout == DENSE:
    return np.transpose(array)
  if layout == VECTOR:
    return np.reshape(array, tuple(flax_shape))
  return array


# ----------------------------------------------------------------------------------------------
# The flax module tree


@dataclasses.dataclass
class _Node:
  """One flax module: class name, fields, input channels, children and variables, in order."""
  name: str
  cls: str
  fields: Dict[str, Any]
  in_channels: Optional[int]
  children: Dict[str, "_Node"] = dataclasses.field(default_factory=dict)
  leaves: Dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> ShapeDtypeStruct

  def has_params(self) -> bool:
    return bool(self.leaves) or any(c.has_params() for c in self.children.values())

  def param_children(self) -> List["_Node"]:
    return [c for c in self.children.values() if c.has_params()]


def _simple_fields(module) -> Dict[str, Any]:
  fields = {}
  for field in dataclasses.fields(module):
    value = getattr(module, field.name, None)
    if isinstance(value, (bool, int, float, str, type(None))):
      fields[field.name] = value
  return fields


def module_tree(config) -> _Node:
  """The flax module tree of `config`'s model, children in creation order (abstract init)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from models import utils as model_utils  # pylint: disable=g-import-not-at-top

  model = model_utils.create_model(config)
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      module = context.module
      shape = getattr(args[0], "shape", None) if args else None
      calls.append((tuple(module.path), type(module).__name__, _simple_fields(module),
                    int(shape[-1]) if shape else None))
    return next_fun(*args, **kwargs)

  size, channels = config.data.image_size, config.data.num_channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  labels = jnp.zeros((1,), jnp.float32 if model_utils.uses_continuous_labels(config)
                     else jnp.int32)
  rng = jax.random.PRNGKey(0)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(
        lambda: model.init({"params": rng, "dropout": rng}, x, labels, train=False))
  other = sorted(set(variables) - {"params"})
  if other:
    raise NotImplementedError(f"config.model.name={config.model.name!r} has variable collections "
                              f"{other} besides 'params'; PyTorch import supports params only.")

  root = None
  nodes = {}
  for path, cls, fields, in_channels in calls:
    if path in nodes:
      continue
    node = _Node(path[-1] if path else "", cls, fields, in_channels)
    nodes[path] = node
    if not path:
      root = node
    else:
      nodes[path[:-1]].children[path[-1]] = node
  for key, value in traverse_util.flatten_dict(variables["params"]).items():
    path = tuple(key[:-1])
    for depth in range(1, len(path) + 1):  # modules whose variables appear outside __call__
      if path[:depth] not in nodes:
        nodes[path[:depth]] = _Node(path[depth - 1], "<not called>", {}, None)
        nodes[path[:depth - 1]].children[path[depth - 1]] = nodes[path[:depth]]
    nodes[path].leaves[key[-1]] = value
  return root


# ----------------------------------------------------------------------------------------------
# Matching


class _Matcher:
  """Walks the flax tree, emitting TensorRules; needs the state dict's keys for `all_modules`."""

  def __init__(self, torch_keys: Sequence[str]):
    self.torch_keys = list(torch_keys)
    self.rules: List[TensorRule] = []
    self.problems: List[str] = []

  def _children_in_torch(self, prefix: str) -> List[str]:
    """Names of the direct children of `prefix` present in the state dict, in first-seen order."""
    start = prefix + "." if prefix else ""
    found = []
    for key in self.torch_keys:
      if key.startswith(start):
        child = key[len(start):].split(".", 1)[0]
        if child not in found:
          found.append(child)
    return found

  @staticmethod
  def _join(*parts):
    return ".".join(p for p in parts if p)

  def match(self, node: _Node, flax_path: str, torch_prefix: str):
    cls = node.cls
    if cls in _UNSUPPORTED:
      raise NotImplementedError(f"Cannot import a PyTorch checkpoint for flax module {cls}: "
                                f"{_UNSUPPORTED[cls]}.")
    if cls in _LEAF_RULES:
      self._leaf(node, flax_path, torch_prefix)
    elif cls in _ALL_MODULES_CLASSES:
      self._all_modules(node, flax_path, torch_prefix)
    elif cls in _SAME_NAME_CLASSES:
      self._same_names(node, flax_path, torch_prefix)
    elif cls in _REFINENET_LAYOUTS:
      stages, refines = _REFINENET_LAYOUTS[cls]
      names = (["begin_conv"] + [f"{s}.{b}" for s in stages for b in (0, 1)] + list(refines)
               + ["normalizer", "end_conv"])
      self._ordered(node, flax_path, torch_prefix, names)
    elif cls in ("ResidualBlock", "ConditionalResidualBlock"):
      self._ordered(node, flax_path, torch_prefix, self._residual_block_names(node))
    elif cls in ("RefineBlock", "CondRefineBlock"):
      children = node.param_children()
      n_inputs = sum(c.cls in ("RCUBlock", "CondRCUBlock") for c in children) - 1
      names = [f"adapt_convs.{i}" for i in range(n_inputs)]
      if any(c.cls in ("MSFBlock", "CondMSFBlock") for c in children):
        names.append("msf")
      self._ordered(node, flax_path, torch_prefix, names + ["crp", "output_convs"])
    elif cls == "RCUBlock":
      n_blocks, n_stages = node.fields["n_blocks"], node.fields["n_stages"]
      names = [f"{i}_{j}_conv" for i in range(1, n_blocks + 1) for j in range(1, n_stages + 1)]
      self._ordered(node, flax_path, torch_prefix, names)
    elif cls == "CondRCUBlock":  # NCSN v1: a conditional norm before each conv
      n_blocks, n_stages = node.fields["n_blocks"], node.fields["n_stages"]
      names = [f"{i}_{j}_{part}" for i in range(1, n_blocks + 1) for j in range(1, n_stages + 1)
               for part in ("norm", "conv")]
      self._ordered(node, flax_path, torch_prefix, names)
    elif cls in ("CRPBlock", "MSFBlock"):
      names = [f"convs.{i}" for i in range(len(node.param_children()))]
      self._ordered(node, flax_path, torch_prefix, names)
    elif cls in ("CondCRPBlock", "CondMSFBlock"):  # norms.i then convs.i, per stage / input
      names = [f"{part}.{i}" for i in range(len(node.param_children()) // 2)
               for part in ("norms", "convs")]
      self._ordered(node, flax_path, torch_prefix, names)
    elif cls == "ConditionalInstanceNorm2dPlus":  # its table: `embed` (num_classes, 3C)
      self._ordered(node, flax_path, torch_prefix, ["embed"])
    elif cls in ("ConvMeanPool", "MeanPoolConv"):
      self._ordered(node, flax_path, torch_prefix, ["conv"])
    else:
      raise NotImplementedError(
          f"No PyTorch naming rule for flax module class {cls!r} (at "
          f"{flax_path or 'the root'}); score_sde_pytorch import supports 'ncsnpp', 'ddpm' and "
          "'ncsnv2_*' networks.")
    unexpected_leaves = set(node.leaves) - set(_LEAF_RULES.get(cls, {}))
    if unexpected_leaves:
      raise NotImplementedError(f"Flax module {flax_path} ({cls}) holds variables "
                                f"{sorted(unexpected_leaves)} with no PyTorch rule.")

  @staticmethod
  def _residual_block_names(node: _Node) -> List[str]:
    """PyTorch attribute names of an NCSN residual block, in flax creation order.

    Flax creates the shortcut conv first in a block that changes channels without resampling,
    last otherwise; PyTorch always calls it `shortcut`.
    """
    resample = node.fields.get("resample")
    changes_channels = node.in_channels != node.fields.get("output_dim")
    if resample is None and changes_channels:
      return ["normalize1", "shortcut", "conv1", "normalize2", "conv2"]
    names = ["normalize1", "conv1", "normalize2", "conv2"]
    return names + ["shortcut"] if (resample is not None or changes_channels) else names

  def _leaf(self, node: _Node, flax_path: str, torch_prefix: str):
    frozen = node.cls in FROZEN_CLASSES
    for name, value in node.leaves.items():
      torch_name, layout = _LEAF_RULES[node.cls][name]
      self.rules.append(TensorRule(
          flax_path=f"{flax_path}/{name}", torch_key=self._join(torch_prefix, torch_name),
          layout=layout, flax_shape=tuple(value.shape), flax_dtype=value.dtype, frozen=frozen))
    if node.param_children():
      raise NotImplementedError(f"Flax layer {flax_path} ({node.cls}) has submodules with "
                                "variables; the import rules treat it as a leaf.")

  def _all_modules(self, node: _Node, flax_path: str, torch_prefix: str):
    container = self._join(torch_prefix, "all_modules")
    indices = sorted(int(c) for c in self._children_in_torch(container) if c.isdigit())
    children = node.param_children()
    if len(indices) != len(children):
      self.problems.append(
          f"the file's {container} has {len(indices)} modules with tensors (indices "
          f"{_short(indices)}), the flax model {len(children)} "
          f"({_short([c.name for c in children])}); modules are paired in order, so the pairs "
          "after the first difference are off")
    for index, child in zip(indices, children):
      self.match(child, f"{flax_path}/{child.name}", f"{container}.{index}")
    for child in children[len(indices):]:
      self.match(child, f"{flax_path}/{child.name}", f"{container}.<none>")

  def _same_names(self, node: _Node, flax_path: str, torch_prefix: str):
    present = set(self._children_in_torch(torch_prefix))
    for child in node.param_children():
      torch_name = child.name
      base = re.sub(r"_0$", "", child.name)
      if torch_name not in present and base != child.name and base in present:
        torch_name = base  # e.g. Combine's `Conv` in some score_sde_pytorch forks
      self.match(child, f"{flax_path}/{child.name}", self._join(torch_prefix, torch_name))

  def _ordered(self, node: _Node, flax_path: str, torch_prefix: str, torch_names: List[str]):
    children = node.param_children()
    if len(children) != len(torch_names):
      raise NotImplementedError(
          f"Flax module {flax_path or 'root'} ({node.cls}) has {len(children)} submodules with "
          f"variables ({[c.name for c in children]}) but its PyTorch counterpart has "
          f"{len(torch_names)} ({torch_names}); the import rules do not cover this layout.")
    for child, torch_name in zip(children, torch_names):
      self.match(child, f"{flax_path}/{child.name}", self._join(torch_prefix, torch_name))


def _short(items, limit=12):
  items = list(items)
  text = ", ".join(str(i) for i in items[:limit])
  return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def match(config, torch_keys: Sequence[str]) -> Plan:
  """Pairs the variables of `config`'s model with the tensors of a score_sde_pytorch state dict.

  Args:
    config: score_sde config; `config.model.name` picks the flax network.
    torch_keys: the state dict's names without the 'module.' prefix, in file order (the
      `all_modules` indices present are paired in order with the flax modules).
  Returns:
    Plan(rules, buffers, problems): one TensorRule per flax variable ('params/...' paths);
    buffers {'sigmas': get_sigmas(config)} the PyTorch network registers; problems found while
    pairing (counts that differ).
  Raises:
    NotImplementedError: the network has a module class with no rule (e.g. NCSN v1).
  """
  from models import utils as model_utils  # pylint: disable=g-import-not-at-top
  root = module_tree(config)
  matcher = _Matcher(torch_keys)
  matcher.match(root, "params", "")
  buffers = ({} if root.cls in _NO_SIGMAS_BUFFER else
             {"sigmas": np.asarray(model_utils.get_sigmas(config), np.float64)})
  return Plan(rules=matcher.rules, buffers=buffers, problems=matcher.problems)
