"""Normalisation layers of the NCSN family (NCSN v1, NCSNv2), as score_sde names them.

All layers act on NHWC images `x` of shape (B, H, W, C) and return the same shape. Statistics are
per sample and per channel over (H, W), with the *biased* variance and eps = 1e-5 (PyTorch's
`InstanceNorm2d`, which the NCSN papers used, and score_sde's JAX port).

Parameter names and shapes follow the released score_sde checkpoints: the unconditional layers keep
their per-channel parameters with shape (1, 1, 1, C); the conditional layer keeps one row per noise
level in an `Embed_0/embedding` table of shape (num_classes, 3C) laid out as [gamma | alpha | beta].
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from errors import UserError

EPS = 1e-5


def _near_one_init(key, shape, dtype=jnp.float32):
  """N(1, 0.02²): the initial scale of NCSN's normalisation layers."""
  return 1. + 0.02 * jax.random.normal(key, shape, dtype)


def _instance_normalize(x):
  """Per-sample, per-channel standardisation over (H, W).

  Returns (h, means) with h = (x - mean_HW) / sqrt(var_HW + eps) of shape (B, H, W, C) and the
  channel means of shape (B, C).
  """
  means = jnp.mean(x, axis=(1, 2))
  h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + EPS)
  return h, means


def _standardized_channel_means(means, ddof: int = 0):
  """InstanceNorm++'s extra input: the channel means standardised across channels.

  means: (B, C) -> (means - mean_C) / sqrt(var_C + eps), (B, C); the variance over C is biased
  (ddof 0, score_sde's JAX code) or unbiased (ddof 1, `torch.var` in the ermongroup code).
  """
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True, ddof=ddof)
  return (means - m) / jnp.sqrt(v + EPS)


class VarianceNorm2d(nn.Module):
  """x / sqrt(var_HW(x) + eps) · scale (+ bias): divides by the spread, keeps the mean.

  Params: `scale` (1, 1, 1, C) ~ N(1, 0.02²); `bias` (1, 1, 1, C) zeros, only with `bias=True`.
  """
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = x / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + EPS)
    h = h * self.param('scale', _near_one_init, (1, 1, 1, c))
    if self.bias:
      h = h + self.param('bias', nn.initializers.zeros, (1, 1, 1, c))
    return h


class InstanceNorm2d(nn.Module):
  """Plain instance normalisation: (x - mean_HW) / sqrt(var_HW + eps) · scale (+ bias).

  Params: `scale` (1, 1, 1, C) ones; `bias` (1, 1, 1, C) zeros (with `bias=True`, the default).
  """
  bias: bool = True

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    h = (x - mean) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + EPS)
    h = h * self.param('scale', nn.initializers.ones, (1, 1, 1, c))
    if self.bias:
      h = h + self.param('bias', nn.initializers.zeros, (1, 1, 1, c))
    return h


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ (NCSNv2): instance norm that gives the channel means back through `alpha`.

  With mu (B, C) the per-channel means over (H, W) and
  mu~ = (mu - mean_C mu) / sqrt(var_C mu + eps) (biased variance over the C channels),

      y = gamma · ((x - mu) / sqrt(var_HW x + eps) + alpha · mu~) + beta

  Params (each (1, 1, 1, C)): `alpha`, `gamma` ~ N(1, 0.02²); `beta` zeros (only with `bias=True`).
  `channel_means_ddof` 1 takes the unbiased var_C, as the ermongroup PyTorch code does.
  x: (B, H, W, C) -> (B, H, W, C).
  """
  bias: bool = True
  channel_means_ddof: int = 0

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h, means = _instance_normalize(x)
    means_plus = _standardized_channel_means(means, self.channel_means_ddof)
    h = h + means_plus[:, None, None, :] * self.param('alpha', _near_one_init, (1, 1, 1, c))
    h = h * self.param('gamma', _near_one_init, (1, 1, 1, c))
    if self.bias:
      h = h + self.param('beta', nn.initializers.zeros, (1, 1, 1, c))
    return h


class ConditionalInstanceNorm2dPlus(nn.Module):
  """Noise-conditional InstanceNorm++ (NCSN v1): gamma, alpha, beta looked up per noise level.

  Same formula as `InstanceNorm2dPlus`, with (gamma, alpha, beta) = rows y of one `Embed_0`
  table of shape (num_classes, 3C) split as [gamma | alpha | beta] (gamma, alpha ~ N(1, 0.02²),
  beta zeros at init); with `bias=False` the table is (num_classes, 2C) = [gamma | alpha].
  x: (B, H, W, C), y: (B,) int class (noise-level) indices -> (B, H, W, C).
  `channel_means_ddof` as in `InstanceNorm2dPlus`.
  """
  num_classes: int = 10
  bias: bool = True
  channel_means_ddof: int = 0

  @nn.compact
  def __call__(self, x, y):
    c = x.shape[-1]
    h, means = _instance_normalize(x)
    means_plus = _standardized_channel_means(means, self.channel_means_ddof)
    n_parts = 3 if self.bias else 2

    def embedding_init(key, shape, dtype=jnp.float32):
      scales = _near_one_init(key, (shape[0], 2 * c), dtype)
      if not self.bias:
        return scales
      return jnp.concatenate([scales, jnp.zeros((shape[0], c), dtype)], axis=-1)

    table = nn.Embed(num_embeddings=self.num_classes, features=n_parts * c,
                     embedding_init=embedding_init)
    parts = jnp.split(table(y), n_parts, axis=-1)
    gamma, alpha = parts[0], parts[1]
    h = h + means_plus[:, None, None, :] * alpha[:, None, None, :]
    out = gamma[:, None, None, :] * h
    if self.bias:
      out = out + parts[2][:, None, None, :]
    return out


_UNCONDITIONAL = {
    'InstanceNorm': InstanceNorm2d,
    'InstanceNorm++': InstanceNorm2dPlus,
    'VarianceNorm': VarianceNorm2d,
    'GroupNorm': nn.GroupNorm,
}


def get_normalization(config, conditional: bool = False,
                      channel_means_ddof: int = 0) -> Callable[..., nn.Module]:
  """The normalisation layer class that `config.model.normalization` names.

  Unconditional: 'InstanceNorm', 'InstanceNorm++', 'VarianceNorm', 'GroupNorm' (flax's, 32 groups).
  Conditional (NCSN v1): only 'InstanceNorm++', with one embedding row per noise level:
  `config.model.num_classes` if the config has it, else `config.model.num_scales`.
  `channel_means_ddof` 1 gives InstanceNorm++ the unbiased variance of the channel means (the
  ermongroup PyTorch networks). Returns a zero-argument constructor (class or partial); call the
  instance as `norm(x)` or `norm(x, y)` when conditional.
  """
  norm = config.model.normalization
  if conditional:
    if norm != 'InstanceNorm++':
      raise UserError(
          f"config.model.normalization={norm!r} has no noise-conditional version; the "
          "conditional NCSN networks support only 'InstanceNorm++'.")
    num_classes = config.model.get('num_classes', None) or config.model.num_scales
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=int(num_classes),
                             channel_means_ddof=channel_means_ddof)
  if norm not in _UNCONDITIONAL:
    raise UserError(f"config.model.normalization={norm!r} is not supported; "
                     f"choose one of {sorted(_UNCONDITIONAL)}.")
  if norm == 'InstanceNorm++' and channel_means_ddof:
    return functools.partial(InstanceNorm2dPlus, channel_means_ddof=channel_means_ddof)
  return _UNCONDITIONAL[norm]
