"""Noise-conditional image classifiers for class-conditional sampling (score_sde's classifier).

Kept apart from the score models (`models.utils`): a classifier is selected by
`config.classifier.name`, built as `cls(config=config)` and called as
`classifier.apply({'params': params}, x, noise_std, train=False)` with x (B, H, W, C) float32,
already normalised per channel, and noise_std (B,) the std of the VE marginal at x; it returns
logits (B, num_classes).

`wideresnet_noise_conditional` is score_sde's WRN-28-10 classifier for CIFAR-10
(`configs/ve/cifar10_classifier.py`). Its module and class names reproduce score_sde's flax
variable tree, so the released params file loads unchanged with `load_params`:

  GaussianFourierProjection_0/W (E,)                      E = classifier.embedding_size (128)
  Dense_0 (2E -> 4E), Dense_1 (4E -> 4E)                   noise embedding, 4E = 512
  init_conv (3x3, C -> 16, no bias)
  WideResnetGroup_{0,1,2}/WideResnetBlock_{0..n-1}/         n = classifier.blocks_per_group
      init_bn, conv1 (3x3, no bias), Dense_0 (4E -> width), bn_2, conv2 (3x3, no bias)
  pre-pool-bn, Dense_2 (64 k -> num_classes)
with group widths 16 k, 32 k, 64 k (k = classifier.channel_multiplier) and strides 1, 2, 2. The
`*bn*` layers are GroupNorms (min(channels // 4, 32) groups, epsilon 1e-5), not batch norms: the
network has no state besides `params`.

Config fields read: classifier.{name, blocks_per_group, channel_multiplier, num_classes,
embedding_size, fourier_scale, image_mean, image_std}, data.{image_size, num_channels}.
"""
import os
from typing import Any, Callable, Dict, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from errors import MissingFileError, UserError
from models import layerspp

_CLASSIFIERS: Dict[str, Type[nn.Module]] = {}

# Names of the GroupNorm layers: flax 0.3 (score_sde's) stored their scale and bias as (1, 1, 1, C).
_GROUP_NORM_NAMES = frozenset({"init_bn", "bn_2", "pre-pool-bn"})

# He-normal for the convolutions, scaled by the fan-out (as in the autoaugment WRN code).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def register_classifier(name: str):
  """Class decorator adding a classifier to the registry under `name` (`config.classifier.name`)."""

  def _register(cls):
    if name in _CLASSIFIERS:
      raise ValueError(f"A classifier named {name!r} is already registered ({_CLASSIFIERS[name]}).")
    _CLASSIFIERS[name] = cls
    return cls

  return _register


def get_classifier(name: str) -> Type[nn.Module]:
  """The registered classifier class called `name`."""
  if name not in _CLASSIFIERS:
    raise UserError(f"config.classifier.name={name!r} is not a known classifier; known: "
                    f"{sorted(_CLASSIFIERS)}.")
  return _CLASSIFIERS[name]


def create_classifier(config) -> nn.Module:
  """The (uninitialised) classifier that `config.classifier.name` selects, bound to `config`."""
  return get_classifier(config.classifier.name)(config=config)


# ----------------------------------------------------------------------------- the WideResNet

def _final_dense_init(key, shape, dtype=jnp.float32):
  """U(-r, r) with r = 1 / sqrt(number of outputs), for the last Dense (fan_in, fan_out)."""
  bound = 1.0 / np.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def _norm_relu(x, name: str):
  """GroupNorm with min(C // 4, 32) groups (a child of the calling module named `name`), then ReLU."""
  x = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
  return nn.relu(x)


def _add_shortcut(branch, shortcut):
  """branch + shortcut; where the widths differ, the shortcut is first average-pooled by the
  block's stride and zero-padded in channels to the branch's width."""
  if branch.shape[-1] != shortcut.shape[-1]:
    stride = shortcut.shape[-2] // branch.shape[-2]
    shortcut = nn.avg_pool(shortcut, (stride, stride), (stride, stride))
    extra = branch.shape[-1] - shortcut.shape[-1]
    shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return branch + shortcut


class WideResnetBlock(nn.Module):
  """Pre-activation residual block: (B, H, W, C_in) -> (B, H / s, W / s, channels).

  `temb` (B, T) is added, through swish and a Dense, after the first convolution. With
  `activate_before_residual` the shortcut takes the normalised, activated input instead of the
  raw one (the first block of the network).
  """
  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb, train: bool = False):
    del train  # no dropout, no batch statistics
    h = _norm_relu(x, "init_bn")
    shortcut = h if self.activate_before_residual else x
    h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding="SAME", use_bias=False,
                kernel_init=_conv_init, name="conv1")(h)
    h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
    h = _norm_relu(h, "bn_2")
    h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                name="conv2")(h)
    return _add_shortcut(h, shortcut)


class WideResnetGroup(nn.Module):
  """`blocks` WideResnetBlocks of width `channels`; only the first one strides."""
  blocks: int
  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb, train: bool = False):
    for i in range(self.blocks):
      x = WideResnetBlock(self.channels, self.stride if i == 0 else 1,
                          activate_before_residual=self.activate_before_residual and i == 0)(
                              x, temb, train)
    return x


@register_classifier("wideresnet_noise_conditional")
class WideResnet(nn.Module):
  """Noise-conditional WideResNet (score_sde's `wideresnet_noise_conditional.WideResnet`).

  `__call__(x, noise_std, train)`: x (B, H, W, C) float32, normalised per channel (see
  `logit_fn`); noise_std (B,) > 0, the VE marginal std at x. Returns logits (B, num_classes).
  Each image is first standardised to zero mean and unit std (the std floored at
  1 / sqrt(H W C)), so the logits do not change under x -> a x + b, a > 0.
  """
  config: Any

  @nn.compact
  def __call__(self, x, noise_std, train: bool = False):
    c = self.config.classifier
    k = c.channel_multiplier
    size = int(np.prod(x.shape[1:]))
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(size))

    temb = layerspp.GaussianFourierProjection(embedding_size=c.embedding_size,
                                              scale=c.fourier_scale)(jnp.log(noise_std))
    temb = nn.Dense(4 * c.embedding_size)(temb)
    temb = nn.Dense(4 * c.embedding_size)(nn.swish(temb))

    x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                name="init_conv")(x)
    x = WideResnetGroup(c.blocks_per_group, 16 * k, 1, activate_before_residual=True)(
        x, temb, train)
    x = WideResnetGroup(c.blocks_per_group, 32 * k, 2)(x, temb, train)
    x = WideResnetGroup(c.blocks_per_group, 64 * k, 2)(x, temb, train)
    x = _norm_relu(x, "pre-pool-bn")
    x = jnp.mean(x, axis=(1, 2))  # global average pool -> (B, 64 k)
    return nn.Dense(c.num_classes, kernel_init=_final_dense_init)(x)


# ----------------------------------------------------------------------------- params

def _example_inputs(config, batch: int = 1):
  size, channels = config.data.image_size, config.data.num_channels
  return (jnp.zeros((batch, size, size, channels), jnp.float32), jnp.ones((batch,), jnp.float32))


def init_params(config, rng):
  """Freshly initialised params of the config's classifier (for training from scratch)."""
  x, noise_std = _example_inputs(config)
  classifier = create_classifier(config)
  init = jax.jit(lambda key: classifier.init({"params": key}, x, noise_std, train=False))
  return init(rng)["params"]


def param_shapes(config) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """{('Dense_0', 'kernel'): shape, ...} of the config's classifier (eval_shape: no compute)."""
  tree = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _upgrade_legacy_group_norm(flat, expected):
  """flax-0.3 GroupNorm scale/bias leaves (1, 1, 1, C) -> (C,) where the model wants (C,)."""
  out = {}
  for key, value in flat.items():
    shape = np.shape(value)
    if (len(key) >= 2 and key[-2] in _GROUP_NORM_NAMES and key[-1] in ("scale", "bias")
        and len(shape) == 4 and shape[:3] == (1, 1, 1) and expected.get(key) == shape[-1:]):
      value = np.reshape(value, shape[-1:])
    out[key] = value
  return out


def load_params(config, path: str):
  """The classifier params stored at `path`, a flax msgpack of the params dict (score_sde's
  released classifier file, or `serialization.msgpack_serialize(params)`), as jnp arrays.

  The tree must be the one the config's classifier has at data.image_size / data.num_channels;
  otherwise a UserError names the file and the first missing, unexpected or misshaped leaf.
  A missing file raises MissingFileError, an unreadable one UserError.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"Classifier params file {path!r} not found.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    tree = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types for corrupt input
    raise UserError(f"Classifier params file {path!r} ({len(raw)} bytes) is not a readable flax "
                    f"msgpack file (truncated or another format?): {type(e).__name__}: {e}") from e
  if not isinstance(tree, dict) or not tree:
    raise UserError(f"Classifier params file {path!r} holds a {type(tree).__name__}, not a "
                    "params dict.")
  if set(tree) == {"params"} and isinstance(tree["params"], dict):
    tree = tree["params"]  # {'params': ...} as flax's init returns it

  expected = param_shapes(config)
  flat = _upgrade_legacy_group_norm(traverse_util.flatten_dict(tree), expected)
  actual = {k: tuple(np.shape(v)) for k, v in flat.items()}
  problems = ([(k, f"missing (model {expected[k]})") for k in expected if k not in actual]
              + [(k, f"unexpected {actual[k]}") for k in actual if k not in expected]
              + [(k, f"file {actual[k]}, model {expected[k]}")
                 for k in expected if k in actual and actual[k] != expected[k]])
  if problems:
    problems.sort(key=lambda p: p[0])
    key, what = problems[0]
    more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
    raise UserError(
        f"Classifier params file {path!r} does not fit config.classifier.name="
        f"{config.classifier.name!r} at {config.data.image_size}x{config.data.image_size}x"
        f"{config.data.num_channels}: {'/'.join(key)}: {what}{more}.")
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


# ----------------------------------------------------------------------------- logits

def input_normalisation(config) -> Tuple[np.ndarray, np.ndarray]:
  """(mean (C,), std (C,)) float32 of config.classifier.image_mean / image_std, checked: one
  value per data channel, std > 0; otherwise a UserError naming the fields."""
  c = config.classifier
  mean = np.asarray(c.image_mean, np.float32).reshape(-1)
  std = np.asarray(c.image_std, np.float32).reshape(-1)
  channels = config.data.num_channels
  if mean.shape != (channels,) or std.shape != (channels,):
    raise UserError(f"config.classifier.image_mean and image_std need one value per channel "
                    f"(data.num_channels={channels}); got {len(mean)} and {len(std)}.")
  if not np.all(std > 0):
    raise UserError(f"config.classifier.image_std must be positive; got {tuple(c.image_std)}.")
  return mean, std


def logit_fn(config, classifier: nn.Module, params) -> Callable:
  """fn(x, noise_std) -> logits (B, num_classes) for x (B, H, W, C) in the score model's data
  space and noise_std (B,) the VE marginal std at x.

  x is first normalised per channel with classifier.image_mean / image_std, statistics of the
  data as the score model sees them (in [0, 1] for data.centered=False, as for score_sde's
  CIFAR-10 classifier).
  """
  mean, std = (jnp.asarray(v) for v in input_normalisation(config))

  def fn(x, noise_std):
    return classifier.apply({"params": params}, (x - mean) / std, noise_std, train=False)

  return fn
