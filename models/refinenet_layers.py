"""RefineNet building blocks of NCSN v1 and NCSNv2 (score_sde's JAX port of the NCSN layers).

Images are NHWC, (B, H, W, C). Class names matter: flax names submodules `<ClassName>_<k>` in
creation order, and the released checkpoints' variable trees use these names
(`ResidualBlock_2/ConvMeanPool_0/Conv_0/kernel`, `RefineBlock_1/MSFBlock_0/Conv_1/bias`, ...).
The convolution helpers are plain functions, so their `nn.Conv` lands directly in the calling
module as `Conv_<k>`.

Blocks (the `Cond*` versions take an extra `y`: (B,) int noise-level indices, and normalise with a
noise-conditional layer where the unconditional ones have none):
- `ResidualBlock` / `ConditionalResidualBlock`: pre-activation ResNet block of the backbone;
  `resample='down'` halves H and W through `ConvMeanPool`, unless dilated (then it keeps the size).
- `RCUBlock`: residual conv units; `CRPBlock`: chained residual pooling (5x5 max pool, stride 1;
  average pool in the conditional version); `MSFBlock`: multi-resolution fusion (3x3 conv, resize
  to the finest input, sum); `RefineBlock`: RCU per input -> MSF -> CRP -> output RCU.
"""
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from errors import UserError

# config.model.interpolation -> jax.image.resize method.
_RESIZE_METHODS = {'bilinear': 'bilinear', 'nearest_neighbor': 'nearest'}

_ACTIVATIONS = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2),
    'swish': nn.swish,
}


def get_act(config) -> Callable:
  """The activation `config.model.nonlinearity` names: elu, relu, lrelu (slope 0.2), swish."""
  name = config.model.nonlinearity
  if name not in _ACTIVATIONS:
    raise UserError(f"config.model.nonlinearity={name!r} is not supported; "
                     f"choose one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def resize_method(interpolation: str) -> str:
  """`jax.image.resize` method for `config.model.interpolation` ('bilinear', 'nearest_neighbor')."""
  if interpolation not in _RESIZE_METHODS:
    raise UserError(f"config.model.interpolation={interpolation!r} is not supported; "
                     f"choose one of {sorted(_RESIZE_METHODS)}.")
  return _RESIZE_METHODS[interpolation]


def resize_align_corners(x, shape):
  """Bilinear resize of (B, H, W, C) to (B, *shape, C) with corner pixels aligned: output pixel i
  samples the input at i·(H−1)/(H′−1), as PyTorch's `F.interpolate(..., 'bilinear',
  align_corners=True)` (the ermongroup NCSN / NCSNv2 MSF blocks)."""
  for axis, size in ((1, shape[0]), (2, shape[1])):
    length = x.shape[axis]
    scale = jnp.float32((length - 1) / (size - 1)) if size > 1 else jnp.float32(0)
    position = jnp.arange(size, dtype=jnp.float32) * scale
    lower = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, length - 1)
    upper = jnp.minimum(lower + 1, length - 1)
    weight = (position - lower).reshape((-1,) + (1,) * (x.ndim - axis - 1))
    x = (1 - weight) * jnp.take(x, lower, axis=axis) + weight * jnp.take(x, upper, axis=axis)
  return x


def _resize(h, shape, method, align_corners):
  if align_corners:
    if method != 'bilinear':
      raise UserError("align_corners resizing is bilinear: set config.model.interpolation="
                       "'bilinear'.")
    return resize_align_corners(h, shape)
  return jax.image.resize(h, (h.shape[0], *shape, h.shape[-1]), method)


def _pytorch_default_inits(kernel_shape, init_scale):
  """PyTorch's default Conv2d init: U(±1/sqrt(fan_in)) for kernel and bias, as NCSN used."""
  init_scale = 1e-10 if init_scale == 0 else init_scale
  kernel_init = jax.nn.initializers.variance_scaling(init_scale / 3., 'fan_in', 'uniform')
  fan_in = kernel_shape[0] * kernel_shape[1] * kernel_shape[2]
  bound = math.sqrt(init_scale / fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return kernel_init, bias_init


def _ncsn_conv(x, out_planes, kernel_size, stride, bias, dilation, init_scale):
  kernel_init, bias_init = _pytorch_default_inits(
      (kernel_size, kernel_size, x.shape[-1], out_planes), init_scale)
  return nn.Conv(out_planes, kernel_size=(kernel_size, kernel_size), strides=(stride, stride),
                 padding='SAME', use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=kernel_init, bias_init=bias_init)(x)


def ncsn_conv1x1(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.):
  """1x1 convolution, PyTorch-style init: (B, H, W, Cin) -> (B, H, W, out_planes) at stride 1."""
  return _ncsn_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ncsn_conv3x3(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.):
  """3x3 convolution (dilated when dilation > 1: padding = dilation keeps H, W), PyTorch-style init.

  (B, H, W, Cin) -> (B, H, W, out_planes) at stride 1.
  """
  return _ncsn_conv(x, out_planes, 3, stride, bias, dilation, init_scale)


def mean_pool_2x2(x):
  """Average of each non-overlapping 2x2 patch: (B, H, W, C) -> (B, H/2, W/2, C) (H, W even)."""
  total = (x[:, ::2, ::2, :] + x[:, 1::2, ::2, :]) + x[:, ::2, 1::2, :]
  return (total + x[:, 1::2, 1::2, :]) / 4.


class ConvMeanPool(nn.Module):
  """Convolution ('SAME', stride 1), then 2x2 mean pool: (B, H, W, Cin) -> (B, H/2, W/2, out)."""
  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.output_dim, kernel_size=(self.kernel_size, self.kernel_size),
                strides=(1, 1), padding='SAME', use_bias=self.biases)(x)
    return mean_pool_2x2(h)


class MeanPoolConv(nn.Module):
  """2x2 mean pool then convolution: (B, H, W, Cin) -> (B, H/2, W/2, output_dim)."""
  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.output_dim, kernel_size=(self.kernel_size, self.kernel_size),
                   strides=(1, 1), padding='SAME', use_bias=self.biases)(mean_pool_2x2(x))


def _residual_block(x, output_dim, resample, dilation, norm, act):
  """Shared body of `ResidualBlock` / `ConditionalResidualBlock`; `norm(h)` normalises.

  Creation order (and so the names): norm, conv, norm, conv [, shortcut conv].
  """
  if resample not in (None, 'down'):
    raise ValueError(f"resample={resample!r}: NCSN residual blocks support None or 'down'.")
  h = act(norm(x))
  if resample == 'down':
    h = ncsn_conv3x3(h, h.shape[-1], dilation=dilation)
    h = act(norm(h))
    if dilation > 1:  # dilated "down" blocks keep the resolution
      h = ncsn_conv3x3(h, output_dim, dilation=dilation)
      shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
    else:
      h = ConvMeanPool(output_dim=output_dim)(h)
      shortcut = ConvMeanPool(output_dim=output_dim, kernel_size=1)(x)
  else:
    if dilation > 1:
      shortcut = x if output_dim == x.shape[-1] else ncsn_conv3x3(x, output_dim, dilation=dilation)
    else:
      shortcut = x if output_dim == x.shape[-1] else ncsn_conv1x1(x, output_dim)
    h = ncsn_conv3x3(h, output_dim, dilation=dilation)
    h = act(norm(h))
    h = ncsn_conv3x3(h, output_dim, dilation=dilation)
  return h + shortcut


class ResidualBlock(nn.Module):
  """Pre-activation residual block of the NCSNv2 backbone.

  x: (B, H, W, Cin) -> (B, H', W', output_dim); H' = H/2 when resample='down' and dilation == 1,
  else H. `normalization` is a zero-argument constructor of an unconditional layer.
  """
  output_dim: int
  normalization: Any
  resample: Optional[str] = None
  act: Any = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    return _residual_block(x, self.output_dim, self.resample, self.dilation,
                           lambda h: self.normalization()(h), self.act)


class ConditionalResidualBlock(nn.Module):
  """`ResidualBlock` with noise-conditional normalisation (NCSN v1). x: (B,H,W,Cin), y: (B,) int."""
  output_dim: int
  normalization: Any
  resample: Optional[str] = None
  act: Any = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x, y):
    return _residual_block(x, self.output_dim, self.resample, self.dilation,
                           lambda h: self.normalization()(h, y), self.act)


class RCUBlock(nn.Module):
  """Residual conv units: n_blocks × (x + [act -> 3x3 conv, no bias] × n_stages); shape kept."""
  features: int
  n_blocks: int
  n_stages: int
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x):
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        x = ncsn_conv3x3(self.act(x), self.features, stride=1, bias=False)
      x = x + residual
    return x


class CondRCUBlock(nn.Module):
  """`RCUBlock` with a conditional norm before each activation: [norm -> act -> conv] per stage."""
  features: int
  n_blocks: int
  n_stages: int
  normalizer: Any
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x, y):
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        x = self.act(self.normalizer()(x, y))
        x = ncsn_conv3x3(x, self.features, stride=1, bias=False)
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: x = act(x); path_k = conv(maxpool5x5(path_{k-1})); x += path_k.

  Max pool: 5x5 window, stride 1, 'SAME' (-inf padding); convs 3x3 without bias. (B,H,W,C) kept.
  """
  features: int
  n_stages: int
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x):
    x = self.act(x)
    path = x
    for _ in range(self.n_stages):
      path = nn.max_pool(path, window_shape=(5, 5), strides=(1, 1), padding='SAME')
      path = ncsn_conv3x3(path, self.features, stride=1, bias=False)
      x = path + x
    return x


class CondCRPBlock(nn.Module):
  """NCSN v1's chained residual pooling: path = conv(avgpool5x5(norm(path, y))); x += path.

  Average pool: 5x5, stride 1, 'SAME' with zero padding counted (divides by 25 everywhere, like
  PyTorch's AvgPool2d(5, 1, 2)).
  """
  features: int
  n_stages: int
  normalizer: Any
  act: Any = nn.relu

  @nn.compact
  def __call__(self, x, y):
    x = self.act(x)
    path = x
    for _ in range(self.n_stages):
      path = self.normalizer()(path, y)
      path = nn.avg_pool(path, window_shape=(5, 5), strides=(1, 1), padding='SAME',
                         count_include_pad=True)
      path = ncsn_conv3x3(path, self.features, stride=1, bias=False)
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum_i resize(conv3x3_i(xs[i]) (with bias), shape).

  xs: list of (B, H_i, W_i, C_i) -> (B, *shape, features); `interpolation` as in
  `config.model.interpolation` ('bilinear': half-pixel bilinear of `jax.image.resize`, or with
  `align_corners` PyTorch's align_corners=True bilinear).
  """
  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'
  align_corners: bool = False

  @nn.compact
  def __call__(self, xs):
    method = resize_method(self.interpolation)
    sums = jnp.zeros((xs[0].shape[0], *self.shape, self.features))
    for x in xs:
      h = ncsn_conv3x3(x, self.features, stride=1, bias=True)
      sums = sums + _resize(h, tuple(self.shape), method, self.align_corners)
    return sums


class CondMSFBlock(nn.Module):
  """`MSFBlock` with a conditional norm on each input before its conv."""
  shape: Sequence[int]
  features: int
  normalizer: Any
  interpolation: str = 'bilinear'
  align_corners: bool = False

  @nn.compact
  def __call__(self, xs, y):
    method = resize_method(self.interpolation)
    sums = jnp.zeros((xs[0].shape[0], *self.shape, self.features))
    for x in xs:
      h = self.normalizer()(x, y)
      h = ncsn_conv3x3(h, self.features, stride=1, bias=True)
      sums = sums + _resize(h, tuple(self.shape), method, self.align_corners)
    return sums


class RefineBlock(nn.Module):
  """RefineNet block: RCU(2x2) per input -> MSF (unless `start`) -> CRP(2) -> RCU output.

  xs: list of (B, H_i, W_i, C_i), the finest first -> (B, *output_shape, features). The output
  RCU has 3 blocks when `end` (last block of the network), else 1.
  Creation order: RCUBlock_0..n-1, MSFBlock_0, CRPBlock_0, RCUBlock_n.
  """
  output_shape: Sequence[int]
  features: int
  act: Any = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  align_corners: bool = False

  @nn.compact
  def __call__(self, xs):
    hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, act=self.act)(x) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = MSFBlock(shape=tuple(self.output_shape), features=self.features,
                   interpolation=self.interpolation, align_corners=self.align_corners)(hs)
    h = CRPBlock(self.features, n_stages=2, act=self.act)(h)
    return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act)(h)


class CondRefineBlock(nn.Module):
  """`RefineBlock` of NCSN v1: CondRCU -> CondMSF -> CondCRP -> CondRCU, all taking y."""
  output_shape: Sequence[int]
  features: int
  normalizer: Any
  act: Any = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  align_corners: bool = False

  @nn.compact
  def __call__(self, xs, y):
    hs = [CondRCUBlock(x.shape[-1], n_blocks=2, n_stages=2, normalizer=self.normalizer,
                       act=self.act)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = CondMSFBlock(shape=tuple(self.output_shape), features=self.features,
                       normalizer=self.normalizer, interpolation=self.interpolation,
                       align_corners=self.align_corners)(hs, y)
    h = CondCRPBlock(self.features, n_stages=2, normalizer=self.normalizer, act=self.act)(h, y)
    return CondRCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2,
                        normalizer=self.normalizer, act=self.act)(h, y)
