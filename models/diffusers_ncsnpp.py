"""diffusers' `UNet2DModel` NCSN++ (the `google/ncsnpp-*` hub models) seen as this project's NCSN++.

Pure functions, no file I/O (`diffusers_io` reads the folder):

- `score_sde_fields(unet_config, scheduler_config)`: the score_sde config fields (dotted names)
  of the same network and SDE, or one `DiffusersConfigError` naming the diffusers field that has
  no score_sde equivalent.
- `match(config)`: for every flax variable of the config's NCSN++, the diffusers tensor name it is
  read from and its layout (`models.torch_names.TensorRule`).
- `canonical_tensors(tensors)`: a state dict with the 2022 hub names renamed to today's.
- `to_diffusers(variables, config)`: the inverse (flax variables -> a diffusers state dict).

Module correspondence (diffusers name <- flax module, in the flax network's creation order):
`time_proj` <- GaussianFourierProjection_0 (its `weight`, the old files also a duplicate `W`);
`time_embedding.linear_1/_2` <- Dense_0/_1; `conv_in` <- the first Conv. Down block i: `resnets.j`
(each followed by `attentions.j` in an AttnSkipDownBlock2D), then, except in the last block,
`resnet_down` and `skip_conv` (the input pyramid's Combine). `mid_block.resnets.0`,
`.attentions.0`, `.resnets.1`. Up block k (level L-1-k): `resnets.0..layers_per_block`,
`attentions.0` in an AttnSkipUpBlock2D, then the output pyramid's GroupNorm + Conv
(`skip_norm`, `skip_conv`) and `resnet_up`, except in the last block, whose GroupNorm + Conv are
the UNet's `conv_norm_out`, `conv_out`. Inside a resnet: norm1, conv1, time_emb_proj, norm2,
conv2, conv_shortcut; inside an attention: group_norm, to_q, to_k, to_v, to_out.0 (NIN W = the
Linear's weight transposed).
"""
import functools
import json
import math
import re
from typing import Dict, List, Tuple

import numpy as np

from errors import UserError
from models import torch_names
from models.torch_names import CONV, DENSE, VECTOR, TensorRule

SKIP_DOWN, ATTN_SKIP_DOWN = "SkipDownBlock2D", "AttnSkipDownBlock2D"
SKIP_UP, ATTN_SKIP_UP = "SkipUpBlock2D", "AttnSkipUpBlock2D"
# diffusers' attention blocks here use 32 GroupNorm groups, score_sde min(C // 4, 32): equal
# only from 128 channels on (docs/numerics.md §3: the network must be score_sde's).
MIN_ATTENTION_CHANNELS = 128
VE_SAMPLING_EPS = 1e-5  # sde_lib.VESDE.sampling_eps (docs/numerics.md §5)

# UNet2DModel's defaults, for keys an older or hand-written config.json leaves out.
_UNET_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1.0,
    act_fn="silu", attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None,
    norm_eps=1e-5, resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None, time_embedding_dim=None, dropout=0.0, mid_block_type="UNetMidBlock2D")
_SCHEDULER_DEFAULTS = dict(num_train_timesteps=2000, snr=0.15, sigma_min=0.01, sigma_max=1348.0,
                           sampling_eps=1e-5, correct_steps=1)

# The NCSN++ settings every diffusers Skip-block UNet2DModel shares (README table of the format).
FIXED_FIELDS = {
    "training.sde": "vesde", "training.continuous": True,
    "model.name": "ncsnpp", "model.scale_by_sigma": True, "model.normalization": "GroupNorm",
    "model.nonlinearity": "swish", "model.resamp_with_conv": True, "model.conditional": True,
    "model.fir": True, "model.fir_kernel": [1, 3, 3, 1], "model.skip_rescale": True,
    "model.resblock_type": "biggan", "model.progressive": "output_skip",
    "model.progressive_input": "input_skip", "model.progressive_combine": "sum",
    "model.attention_type": "ddpm", "model.init_scale": 0.0, "model.fourier_scale": 16,
    "model.conv_size": 3, "model.embedding_type": "fourier", "data.num_channels": 3,
    "sampling.method": "pc", "sampling.predictor": "reverse_diffusion",
    "sampling.corrector": "langevin",
}
# Fields that change what the network computes: a config loading a diffusers folder must agree
# with the folder's config.json on each (the weights' shapes do not catch all of them).
NETWORK_FIELDS = (
    "data.image_size", "data.num_channels", "data.centered", "training.continuous", "model.name",
    "model.nf", "model.ch_mult", "model.num_res_blocks", "model.attn_resolutions",
    "model.scale_by_sigma", "model.nonlinearity", "model.conditional", "model.fir",
    "model.fir_kernel", "model.skip_rescale", "model.resblock_type", "model.progressive",
    "model.progressive_input", "model.progressive_combine", "model.embedding_type",
    "model.fourier_scale")


class DiffusersConfigError(UserError):
  """A diffusers config value with no equivalent in score_sde's NCSN++ / VE SDE."""


def _fail(source: str, field: str, value, why: str):
  raise DiffusersConfigError(f"{source}: {field}={value!r} {why}")


def _int_list(value, source, field) -> List[int]:
  if (not isinstance(value, (list, tuple)) or not value
      or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
    _fail(source, field, value, "must be a non-empty list of positive integers.")
  return list(value)


def score_sde_fields(unet: dict, scheduler: dict, source: str = "config.json",
                     scheduler_source: str = "scheduler_config.json") -> Dict[str, object]:
  """{dotted score_sde field: value} equivalent to a UNet2DModel + ScoreSdeVeScheduler config.

  Raises DiffusersConfigError naming the first field that score_sde's NCSN++ cannot represent.
  """
  u = dict(_UNET_DEFAULTS, **{k: v for k, v in unet.items() if not k.startswith("_")})
  cls = unet.get("_class_name", "UNet2DModel")
  if cls != "UNet2DModel":
    _fail(source, "_class_name", cls, "is not a UNet2DModel (the google/ncsnpp-* models are).")

  if u["time_embedding_type"] != "fourier":
    _fail(source, "time_embedding_type", u["time_embedding_type"],
          "has no equivalent here: NCSN++ from diffusers needs 'fourier' (sigma-conditioned "
          "Gaussian Fourier features); positional embeddings take discrete labels.")
  for field in ("in_channels", "out_channels"):
    if u[field] != 3:
      _fail(source, field, u[field], "is not 3: the Skip blocks' image pyramids are built for "
            "3 channels only.")
  for field in ("class_embed_type", "num_class_embeds"):
    if u[field] is not None:
      _fail(source, field, u[field], "adds a class embedding, which score_sde's NCSN++ lacks.")
  if u["resnet_time_scale_shift"] != "default":
    _fail(source, "resnet_time_scale_shift", u["resnet_time_scale_shift"],
          "is not supported: score_sde's resnets add the time embedding ('default').")
  if u["norm_num_groups"] is not None:
    _fail(source, "norm_num_groups", u["norm_num_groups"],
          "is set; score_sde's NCSN++ uses min(channels // 4, 32) groups, which diffusers "
          "gives only with norm_num_groups null.")
  if u["attn_norm_num_groups"] is not None:
    _fail(source, "attn_norm_num_groups", u["attn_norm_num_groups"],
          "is set; the mid-block attention must use min(channels // 4, 32) groups (null).")
  if not math.isclose(float(u["norm_eps"]), 1e-6, rel_tol=1e-6):
    _fail(source, "norm_eps", u["norm_eps"], "is not 1e-6, score_sde's GroupNorm epsilon.")
  if u["act_fn"] not in ("silu", "swish"):
    _fail(source, "act_fn", u["act_fn"], "is not 'silu' (score_sde's NCSN++ uses swish).")
  if not math.isclose(float(u["mid_block_scale_factor"]), math.sqrt(2.0), rel_tol=1e-6):
    _fail(source, "mid_block_scale_factor", u["mid_block_scale_factor"],
          "is not sqrt(2): the Skip blocks always rescale their skips by sqrt(2) "
          "(skip_rescale=True), so the mid block must too.")
  if u["mid_block_type"] not in (None, "UNetMidBlock2D"):
    _fail(source, "mid_block_type", u["mid_block_type"], "is not 'UNetMidBlock2D'.")
  if not u["add_attention"]:
    _fail(source, "add_attention", u["add_attention"],
          "drops the mid-block attention, which score_sde's NCSN++ always has.")

  size = u["sample_size"]
  if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
    size = size[0]
  if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
    _fail(source, "sample_size", u["sample_size"], "must be one positive integer (square "
          "images).")
  channels = _int_list(u["block_out_channels"], source, "block_out_channels")
  nf, levels = channels[0], len(channels)
  if any(c % nf for c in channels):
    _fail(source, "block_out_channels", channels, f"are not all multiples of the first ({nf}): "
          "score_sde writes them as nf * ch_mult.")
  if size % 2 ** (levels - 1):
    _fail(source, "sample_size", size, f"is not divisible by 2**{levels - 1} "
          f"({levels} levels of block_out_channels).")
  if u["time_embedding_dim"] not in (None, 4 * nf):
    _fail(source, "time_embedding_dim", u["time_embedding_dim"],
          f"differs from 4 * block_out_channels[0] = {4 * nf}, score_sde's size.")
  blocks = u["layers_per_block"]
  if not isinstance(blocks, int) or blocks < 1:
    _fail(source, "layers_per_block", blocks, "must be a positive integer.")

  down, up = list(u["down_block_types"]), list(u["up_block_types"])
  for field, types, allowed in (("down_block_types", down, (SKIP_DOWN, ATTN_SKIP_DOWN)),
                                ("up_block_types", up, (SKIP_UP, ATTN_SKIP_UP))):
    if len(types) != levels:
      _fail(source, field, types, f"has {len(types)} entries, block_out_channels {levels}.")
    for k, name in enumerate(types):
      if name not in allowed:
        _fail(source, f"{field}[{k}]", name, f"is not one of {list(allowed)}: only the Skip "
              "blocks are score_sde's NCSN++.")
  attn_resolutions = []
  for i in range(levels):
    has_attention = down[i] == ATTN_SKIP_DOWN
    if (up[levels - 1 - i] == ATTN_SKIP_UP) != has_attention:
      _fail(source, f"up_block_types[{levels - 1 - i}]", up[levels - 1 - i],
            f"does not mirror down_block_types[{i}]={down[i]!r}: score_sde's NCSN++ has "
            "attention at a resolution on both paths or on neither.")
    if not has_attention:
      continue
    if channels[i] < MIN_ATTENTION_CHANNELS:
      _fail(source, f"down_block_types[{i}]", down[i],
            f"puts attention at {channels[i]} channels (block_out_channels[{i}]): diffusers' "
            f"attention blocks use 32 GroupNorm groups, score_sde min(C // 4, 32), which differ "
            f"below {MIN_ATTENTION_CHANNELS} channels, so no score_sde config computes this "
            "network.")
    attn_resolutions.append(size // 2 ** i)
  head_dim = u["attention_head_dim"]
  if head_dim is not None:
    attention_channels = {channels[i] for i in range(levels) if down[i] == ATTN_SKIP_DOWN}
    attention_channels.add(channels[-1])  # the mid block
    if any(head_dim != c for c in attention_channels):
      _fail(source, "attention_head_dim", head_dim,
            f"splits attention over several heads (channels {sorted(attention_channels)}); "
            "score_sde's attention has one head (set it to null).")
  dropout = u["dropout"]
  if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    _fail(source, "dropout", dropout, "must be a number in [0, 1).")

  s = dict(_SCHEDULER_DEFAULTS, **{k: v for k, v in scheduler.items() if not k.startswith("_")})
  scheduler_cls = scheduler.get("_class_name", "ScoreSdeVeScheduler")
  if scheduler_cls != "ScoreSdeVeScheduler":
    _fail(scheduler_source, "_class_name", scheduler_cls,
          "is not a ScoreSdeVeScheduler: the google/ncsnpp-* models are VE SDE models.")
  for field in ("sigma_min", "sigma_max", "snr", "sampling_eps"):
    if not isinstance(s[field], (int, float)) or isinstance(s[field], bool) or s[field] <= 0:
      _fail(scheduler_source, field, s[field], "must be a positive number.")
  if not float(s["sigma_min"]) < float(s["sigma_max"]):
    _fail(scheduler_source, "sigma_max", s["sigma_max"],
          f"must exceed sigma_min={s['sigma_min']!r}.")
  for field in ("num_train_timesteps", "correct_steps"):
    if not isinstance(s[field], int) or isinstance(s[field], bool) or s[field] < (
        1 if field == "num_train_timesteps" else 0):
      _fail(scheduler_source, field, s[field], "must be a non-negative integer "
            "(num_train_timesteps positive).")
  if not math.isclose(float(s["sampling_eps"]), VE_SAMPLING_EPS, rel_tol=1e-6):
    _fail(scheduler_source, "sampling_eps", s["sampling_eps"],
          f"differs from the VE SDE's end time {VE_SAMPLING_EPS} that this project's samplers "
          "use (sde_lib.VESDE.sampling_eps).")

  fields = dict(FIXED_FIELDS)
  fields.update({
      "data.image_size": size,
      "data.centered": not bool(u["center_input_sample"]),
      "model.nf": nf,
      "model.ch_mult": tuple(c // nf for c in channels),
      "model.num_res_blocks": blocks,
      "model.attn_resolutions": tuple(attn_resolutions),
      "model.dropout": float(dropout),
      "model.sigma_min": float(s["sigma_min"]),
      "model.sigma_max": float(s["sigma_max"]),
      "model.num_scales": int(s["num_train_timesteps"]),
      "sampling.snr": float(s["snr"]),
      "sampling.n_steps_each": int(s["correct_steps"]),
  })
  return fields


def get_field(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _same(a, b) -> bool:
  if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
    return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b)))
  if isinstance(a, float) or isinstance(b, float):
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
  return a == b


def network_differences(config, fields: Dict[str, object]) -> List[str]:
  """'field: config X, folder Y' for each NETWORK_FIELDS entry where `config` and the fields
  derived from a diffusers folder disagree."""
  differences = []
  for name in NETWORK_FIELDS:
    try:
      value = get_field(config, name)
    except (KeyError, AttributeError):
      value = "<absent>"
    if not _same(value, fields[name]):
      differences.append(f"config.{name}={value!r}, the folder's config.json gives "
                         f"{fields[name]!r}")
  return differences


# ----------------------------------------------------------------------------------------------
# Tensor names

# The 2022 hub uploads' names for the attention projections, and their names today.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v",
                          "proj_attn": "to_out.0"}
LEGACY_FOURIER_NAME, FOURIER_NAME = "time_proj.W", "time_proj.weight"
_LEGACY_ATTENTION = re.compile(r"(^|\.)attentions\.(\d+)\.(query|key|value|proj_attn)\.")

_RESNET_CHILDREN = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "Dense_0": "time_emb_proj",
                    "GroupNorm_1": "norm2", "Conv_1": "conv2", "Conv_2": "conv_shortcut"}
_ATTENTION_CHILDREN = {"GroupNorm_0": "group_norm", "NIN_0": "to_q", "NIN_1": "to_k",
                       "NIN_2": "to_v", "NIN_3": "to_out.0"}
_LEAVES = {
    "Conv": {"kernel": ("weight", CONV), "bias": ("bias", VECTOR)},
    "Dense": {"kernel": ("weight", DENSE), "bias": ("bias", VECTOR)},
    "GroupNorm": {"scale": ("weight", VECTOR), "bias": ("bias", VECTOR)},
    "NIN": {"W": ("weight", DENSE), "b": ("bias", VECTOR)},  # a Linear: W = weight transposed
    "GaussianFourierProjection": {"W": ("weight", VECTOR)},
}
_BLOCK_CLASS = {"resnet": "ResnetBlockBigGANpp", "attention": "AttnBlockpp",
                "combine": "Combine", "conv": "Conv", "dense": "Dense", "norm": "GroupNorm",
                "fourier": "GaussianFourierProjection"}


def module_names(config) -> List[Tuple[str, str]]:
  """[(diffusers module name, kind)] of the NCSN++ modules holding variables, in the order the
  flax network creates them (kind: a key of _BLOCK_CLASS)."""
  m = config.model
  levels, blocks = len(m.ch_mult), int(m.num_res_blocks)
  size = int(config.data.image_size)
  attention = {i for i in range(levels) if size // 2 ** i in tuple(m.attn_resolutions)}
  names = [("time_proj", "fourier"), ("time_embedding.linear_1", "dense"),
           ("time_embedding.linear_2", "dense"), ("conv_in", "conv")]
  for i in range(levels):
    block = f"down_blocks.{i}"
    for j in range(blocks):
      names.append((f"{block}.resnets.{j}", "resnet"))
      if i in attention:
        names.append((f"{block}.attentions.{j}", "attention"))
    if i != levels - 1:
      names += [(f"{block}.resnet_down", "resnet"), (f"{block}.skip_conv", "combine")]
  names += [("mid_block.resnets.0", "resnet"), ("mid_block.attentions.0", "attention"),
            ("mid_block.resnets.1", "resnet")]
  for k in range(levels):
    block, level = f"up_blocks.{k}", levels - 1 - k
    names += [(f"{block}.resnets.{j}", "resnet") for j in range(blocks + 1)]
    if level in attention:
      names.append((f"{block}.attentions.0", "attention"))
    if level != 0:
      names += [(f"{block}.skip_norm", "norm"), (f"{block}.skip_conv", "conv"),
                (f"{block}.resnet_up", "resnet")]
    else:
      names += [("conv_norm_out", "norm"), ("conv_out", "conv")]
  return names


def _leaf_rules(node, flax_path: str, prefix: str) -> List[TensorRule]:
  if node.cls not in _LEAVES or node.param_children() or set(node.leaves) - set(_LEAVES[node.cls]):
    raise NotImplementedError(f"flax module {flax_path} ({node.cls}) has no diffusers rule.")
  rules = []
  for name, value in node.leaves.items():
    suffix, layout = _LEAVES[node.cls][name]
    rules.append(TensorRule(flax_path=f"{flax_path}/{name}",
                            torch_key=f"{prefix}.{suffix}" if prefix else suffix,
                            layout=layout, flax_shape=tuple(value.shape),
                            flax_dtype=value.dtype,
                            frozen=node.cls == "GaussianFourierProjection"))
  return rules


def match(config) -> List[TensorRule]:
  """One TensorRule per flax variable of `config`'s NCSN++: the diffusers tensor it is read from.

  Raises NotImplementedError when the config's network is not the NCSN++ that diffusers' Skip
  blocks build (the names are derived from its structure and would not fit). The rules depend
  on the network's fields only and are remembered per network (one abstract init each).
  """
  network = {section: config[section].to_dict() for section in ("data", "model", "training")
             if section in config}
  key = json.dumps(network, sort_keys=True, default=repr)
  return list(_match(key))


@functools.lru_cache(maxsize=16)
def _match(network_json: str) -> Tuple[TensorRule, ...]:
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads(network_json))
  if config.model.name != "ncsnpp":
    raise NotImplementedError(f"config.model.name={config.model.name!r}: diffusers' "
                              "google/ncsnpp-* format holds an 'ncsnpp' network.")
  for field in ("resblock_type", "progressive", "progressive_input", "progressive_combine",
                "embedding_type"):
    if get_field(config, "model." + field) != FIXED_FIELDS["model." + field]:
      raise NotImplementedError(
          f"config.model.{field}={get_field(config, 'model.' + field)!r}: diffusers' Skip "
          f"blocks build {FIXED_FIELDS['model.' + field]!r}.")
  root = torch_names.module_tree(config)
  children = root.param_children()
  names = module_names(config)
  if len(children) != len(names):
    raise NotImplementedError(f"the flax NCSN++ has {len(children)} modules with variables, "
                              f"diffusers' layout {len(names)}.")
  rules = []
  for child, (prefix, kind) in zip(children, names):
    path = f"params/{child.name}"
    if child.cls != _BLOCK_CLASS[kind]:
      raise NotImplementedError(f"{path} is a {child.cls}, but diffusers' {prefix} is a {kind}.")
    if kind in ("resnet", "attention", "combine"):
      table = {"resnet": _RESNET_CHILDREN, "attention": _ATTENTION_CHILDREN,
               "combine": {"Conv_0": ""}}[kind]
      for grandchild in child.param_children():
        if grandchild.name not in table:
          raise NotImplementedError(f"{path}/{grandchild.name} has no diffusers name.")
        rules += _leaf_rules(grandchild, f"{path}/{grandchild.name}",
                             ".".join(p for p in (prefix, table[grandchild.name]) if p))
    else:
      rules += _leaf_rules(child, path, prefix)
  return tuple(rules)


def canonical_tensors(tensors: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """(the state dict under today's names, problems).

  The 2022 hub files name attention projections `attentions.N.{query,key,value,proj_attn}` (today
  `to_q`, `to_k`, `to_v`, `to_out.0`) and keep `time_proj.W`, a copy of `time_proj.weight`. The
  copy is checked and dropped; a tensor present under both an old and a new name is a problem.
  """
  renamed, problems = {}, []
  for key, value in tensors.items():
    new = _LEGACY_ATTENTION.sub(
        lambda m: f"{m.group(1)}attentions.{m.group(2)}.{LEGACY_ATTENTION_NAMES[m.group(3)]}.", key)
    if key == LEGACY_FOURIER_NAME:
      continue
    if new in renamed:
      problems.append(f"{new} appears twice (also as {key}): the file mixes the 2022 and "
                      "today's attention names")
      continue
    renamed[new] = value
  if LEGACY_FOURIER_NAME in tensors:
    legacy = np.asarray(tensors[LEGACY_FOURIER_NAME])
    if FOURIER_NAME not in renamed:
      renamed[FOURIER_NAME] = legacy
    elif (legacy.shape != np.shape(renamed[FOURIER_NAME])
          or not np.array_equal(legacy, renamed[FOURIER_NAME])):
      problems.append(f"{LEGACY_FOURIER_NAME} {legacy.shape} is not a copy of {FOURIER_NAME} "
                      f"{np.shape(renamed[FOURIER_NAME])}")
  return renamed, problems


def to_torch_layout(array, layout: str) -> np.ndarray:
  """The PyTorch tensor a flax variable comes from (the inverse of `torch_names.to_flax`)."""
  array = np.asarray(array)
  if layout == CONV:
    return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))
  if layout == DENSE:
    return np.ascontiguousarray(np.transpose(array))
  if layout == VECTOR:
    return np.reshape(array, (-1,))
  return array


def to_diffusers(variables, config, legacy: bool = False) -> Dict[str, np.ndarray]:
  """The diffusers state dict of `config`'s NCSN++ variables ({'params': ...}); `legacy` writes
  the 2022 hub names (and the duplicate `time_proj.W`)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()}
  inverse = {v: k for k, v in LEGACY_ATTENTION_NAMES.items()}
  state = {}
  for rule in match(config):
    key = rule.torch_key
    if legacy:
      for new, old in inverse.items():
        key = key.replace(f".{new}.", f".{old}.")
    state[key] = to_torch_layout(flat[rule.flax_path], rule.layout)
  if legacy:
    state[LEGACY_FOURIER_NAME] = state[FOURIER_NAME].copy()
  return state
