"""NCSN++ / DDPM++ layers (score_sde naming and numerics). All activations NHWC float32.

Blocks that take `skip_rescale` return (x + h) / sqrt(2) when it is set, x + h otherwise.
`init_scale` is the DDPM initialiser scale of the last layer of a residual branch (0 means 1e-10).
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers
from models import up_or_down_sampling
from errors import UserError

conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
NIN = layers.NIN
default_init = layers.default_init

_SQRT2 = np.sqrt(2.0)


def _residual(x, h, skip_rescale: bool):
  return (x + h) / _SQRT2 if skip_rescale else x + h


def _num_groups(channels: int) -> int:
  return min(channels // 4, 32)


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a (B,) input: [sin(2πxW), cos(2πxW)] -> (B, 2·embedding_size).

  Param `W` (embedding_size,) ~ N(0, scale²) at init and never trained (stop_gradient).
  """
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    w = jax.lax.stop_gradient(w)
    x_proj = x[:, None] * w[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
  """Merges a skip input `x` into features `y`: Conv_0 (1x1, x -> C_y channels) then sum or cat.

  x: (B, H, W, Cx), y: (B, H, W, Cy) -> (B, H, W, Cy) for 'sum', (B, H, W, 2·Cy) for 'cat'.
  """
  method: str = "cat"

  @nn.compact
  def __call__(self, x, y):
    if self.method not in ("cat", "sum"):
      raise UserError(f"config.model.progressive_combine={self.method!r} is not supported; "
                       "choose 'sum' or 'cat'.")
    h = conv1x1(x, y.shape[-1])
    if self.method == "cat":
      return jnp.concatenate([h, y], axis=-1)
    return h + y


class AttnBlockpp(nn.Module):
  """DDPM self-attention block with optional sqrt(2) skip rescaling.

  Submodules in order: GroupNorm_0, NIN_0..2 (q, k, v), NIN_3 (out, `init_scale`).
  x: (B, H, W, C) -> (B, H, W, C).
  """
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = nn.GroupNorm(num_groups=_num_groups(c))(x)
    h = layers.spatial_self_attention(h, NIN(c), NIN(c), NIN(c))
    h = NIN(c, init_scale=self.init_scale)(h)
    return _residual(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """2x upsampling: nearest (+ Conv_0 3x3) without FIR; FIR filter (or fused Conv2d_0) with FIR.

  x: (B, H, W, C) -> (B, 2H, 2W, out_ch or C). Without a conv the channel count must not change.
  """
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    out_ch = self.out_ch if self.out_ch else c
    if not self.fir:
      h = up_or_down_sampling.naive_upsample_2d(x, factor=2)
      if self.with_conv:
        h = conv3x3(h, out_ch)
    elif not self.with_conv:
      h = up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
    else:
      h = up_or_down_sampling.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                                     use_bias=True, kernel_init=default_init())(x)
    if h.shape != (b, 2 * height, 2 * width, out_ch):
      raise ValueError(f"Upsample without a conv cannot change channels {c} -> {out_ch}.")
    return h


class Downsample(nn.Module):
  """2x downsampling: stride-2 Conv_0 or average pooling without FIR; FIR filter or fused Conv2d_0.

  x: (B, H, W, C) -> (B, H/2, W/2, out_ch or C). Without a conv the channel count must not change.
  """
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    out_ch = self.out_ch if self.out_ch else c
    if not self.fir:
      if self.with_conv:
        x = conv3x3(x, out_ch, stride=2)
      else:
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
    elif not self.with_conv:
      x = up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
    else:
      x = up_or_down_sampling.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                                     use_bias=True, kernel_init=default_init())(x)
    if x.shape != (b, height // 2, width // 2, out_ch):
      raise ValueError(f"Downsample without a conv cannot change channels {c} -> {out_ch}.")
    return x


class ResnetBlockDDPMpp(nn.Module):
  """DDPM residual block with `init_scale` and `skip_rescale` (DDPM++ 'ddpm' resblock).

  Submodules in order: GroupNorm_0, Conv_0, [Dense_0 if temb], GroupNorm_1, Dropout_0, Conv_1
  (`init_scale`), and for a channel change NIN_0 (or Conv_2 with conv_shortcut).
  x: (B, H, W, Cin), temb: (B, T) or None -> (B, H, W, out_ch or Cin).
  """
  act: Callable[[jax.Array], jax.Array]
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(nn.GroupNorm(num_groups=_num_groups(c))(x))
    h = conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(nn.GroupNorm(num_groups=_num_groups(out_ch))(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if c != out_ch:
      x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return _residual(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style residual block that can resample by 2 (NCSN++ 'biggan' resblock).

  With up/down, both the branch (after GroupNorm_0 + act) and the shortcut are resampled: FIR
  filtering when `fir`, else nearest / average pooling. Submodules in order: GroupNorm_0, Conv_0,
  [Dense_0 if temb], GroupNorm_1, Dropout_0, Conv_1 (`init_scale`), and Conv_2 (1x1 shortcut) when
  channels change or the block resamples.
  x: (B, H, W, Cin), temb: (B, T) or None -> (B, H', W', out_ch or Cin), H' = 2H / H/2 / H.
  """
  act: Callable[[jax.Array], jax.Array]
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x, temb=None, train: bool = False):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(nn.GroupNorm(num_groups=_num_groups(c))(x))

    if self.up:
      if self.fir:
        resample = lambda t: up_or_down_sampling.upsample_2d(t, self.fir_kernel, factor=2)
      else:
        resample = lambda t: up_or_down_sampling.naive_upsample_2d(t, factor=2)
      h, x = resample(h), resample(x)
    elif self.down:
      if self.fir:
        resample = lambda t: up_or_down_sampling.downsample_2d(t, self.fir_kernel, factor=2)
      else:
        resample = lambda t: up_or_down_sampling.naive_downsample_2d(t, factor=2)
      h, x = resample(h), resample(x)

    h = conv3x3(h, out_ch)
    if temb is not None:
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(nn.GroupNorm(num_groups=_num_groups(out_ch))(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if c != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch)
    return _residual(x, h, self.skip_rescale)
