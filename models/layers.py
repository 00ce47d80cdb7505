"""DDPM-style layers shared by the DDPM and NCSN++ score networks (score_sde naming).

All activations are NHWC float32. Module class names, submodule creation order and parameter
names reproduce the released score_sde networks, so their checkpoints load unchanged: flax names
a submodule `<ClassName>_<k>` in the order it is created inside `@nn.compact`.
"""
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from errors import UserError


def default_init(scale: float = 1.0):
  """DDPM's initialiser: variance scaling, fan_avg, uniform; `scale=0` is replaced by 1e-10.

  (A scale of exactly zero would make the initialiser degenerate; the released code uses 1e-10
  for "zero-initialised" output layers.)
  """
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


_ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(config) -> Callable[[jax.Array], jax.Array]:
  """The activation `config.model.nonlinearity` names ('elu', 'relu', 'lrelu', 'swish')."""
  name = str(config.model.nonlinearity).lower()
  if name not in _ACTIVATIONS:
    raise UserError(f"config.model.nonlinearity={config.model.nonlinearity!r} is not supported; "
                     f"choose one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def get_normalization(config):
  """The normalisation module class `config.model.normalization` names (DDPM family).

  Only 'GroupNorm' (flax's `nn.GroupNorm`, 32 groups unless given, epsilon 1e-6) is used by the
  DDPM/NCSN++ networks; the InstanceNorm variants belong to NCSNv2.
  """
  name = config.model.normalization
  if name != "GroupNorm":
    raise UserError(f"config.model.normalization={name!r} is not supported by this network; "
                     "only 'GroupNorm' is.")
  return nn.GroupNorm


def ddpm_conv1x1(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """1x1 `nn.Conv` (SAME padding, DDPM init) created in the calling module's scope.

  x: (B, H, W, Cin) -> (B, H/stride, W/stride, out_planes).
  """
  return nn.Conv(out_planes, kernel_size=(1, 1), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros)(x)


def ddpm_conv3x3(x, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0):
  """3x3 `nn.Conv` (SAME padding, DDPM init) created in the calling module's scope.

  x: (B, H, W, Cin) -> (B, H/stride, W/stride, out_planes). With stride 2 on an even size, SAME
  pads one pixel after (bottom/right) only, as DDPM's "pad (0, 1) then VALID" does.
  """
  return nn.Conv(out_planes, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros)(x)


conv1x1 = ddpm_conv1x1
conv3x3 = ddpm_conv3x3


class NIN(nn.Module):
  """Network-in-network: a per-pixel linear map over the last axis.

  Params `W` (in, num_units) and `b` (num_units,). x: (..., in) -> (..., num_units).
  """
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    in_dim = int(x.shape[-1])
    w = self.param("W", default_init(scale=self.init_scale), (in_dim, self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    return jnp.tensordot(x, w, axes=((x.ndim - 1,), (0,))) + b


def get_timestep_embedding(timesteps, embedding_dim: int, max_positions: int = 10000):
  """Transformer sinusoidal embedding of (B,) timesteps -> (B, embedding_dim) float32.

  Frequencies exp(-log(max_positions)·i/(half-1)), i < half = embedding_dim // 2; the first half
  of the output is sin, the second cos; an odd dimension is zero-padded at the end.
  """
  if timesteps.ndim != 1:
    raise UserError(f"timesteps must have shape (B,), got {timesteps.shape}.")
  half_dim = embedding_dim // 2
  log_step = math.log(max_positions) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -log_step)
  emb = timesteps[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


def spatial_self_attention(h, q_layer, k_layer, v_layer):
  """Single-head attention over all H·W positions of (B, H, W, C) features `h`.

  Returns (B, H, W, C): softmax(q·kᵀ/√C)·v.
  """
  b, height, width, c = h.shape
  q, k, v = q_layer(h), k_layer(h), v_layer(h)
  q = jnp.reshape(q, (b, height * width, c))
  k = jnp.reshape(k, (b, height * width, c))
  v = jnp.reshape(v, (b, height * width, c))
  w = jnp.einsum("bic,bjc->bij", q, k) * (int(c) ** (-0.5))
  w = jax.nn.softmax(w, axis=-1)
  out = jnp.einsum("bij,bjc->bic", w, v)
  return jnp.reshape(out, (b, height, width, c))


class AttnBlock(nn.Module):
  """DDPM channel-wise self-attention block with residual: x + NIN(attn(GroupNorm(x))).

  Submodules in order: GroupNorm_0, NIN_0 (q), NIN_1 (k), NIN_2 (v), NIN_3 (out, init 1e-10).
  `normalize()` is called with its default group count (32 for GroupNorm), as released; the
  NCSN++ blocks use min(C // 4, 32) instead. x: (B, H, W, C) -> (B, H, W, C).
  """
  normalize: Any = nn.GroupNorm

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = self.normalize()(x)
    h = spatial_self_attention(h, NIN(c), NIN(c), NIN(c))
    h = NIN(c, init_scale=0.0)(h)
    return x + h


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (Conv_0).

  x: (B, H, W, C) -> (B, 2H, 2W, C).
  """
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      h = ddpm_conv3x3(h, c)
    return h


class Downsample(nn.Module):
  """2x downsampling: stride-2 3x3 conv (Conv_0) or 2x2 average pooling.

  x: (B, H, W, C) -> (B, H/2, W/2, C).
  """
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.with_conv:
      return ddpm_conv3x3(x, c, stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block conditioned on a time embedding.

  Submodules in order: GroupNorm_0, Conv_0, [Dense_0 if temb], GroupNorm_1, Dropout_0, Conv_1
  (init 1e-10), and for a channel change NIN_0 (or Conv_2 with conv_shortcut). Both norms use
  `normalize()`'s default group count (32), as released.
  x: (B, H, W, Cin), temb: (B, T) or None -> (B, H, W, out_ch or Cin).
  """
  act: Callable[[jax.Array], jax.Array]
  normalize: Any = nn.GroupNorm
  dropout: float = 0.5
  out_ch: Optional[int] = None
  conv_shortcut: bool = False

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(self.normalize()(x))
    h = ddpm_conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(self.normalize()(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = ddpm_conv3x3(h, out_ch, init_scale=0.0)
    if c != out_ch:
      x = ddpm_conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h
