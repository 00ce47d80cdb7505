"""NCSN++ / DDPM++ score network (Song et al. 2021), registered as 'ncsnpp'.

Reproduces score_sde's JAX network: same flax variable tree (so released checkpoints load) and the
same numerics. One config-driven U-Net covers both families:
- NCSN++: `resblock_type='biggan'`, FIR resampling, progressive input/output pyramids, Fourier or
  positional noise embedding, output divided by sigma (`scale_by_sigma`);
- DDPM++: typically `progressive='none'`, `progressive_input='none'`, `fir=False`.

Config fields read (all score_sde's own): data.centered, model.{nf, ch_mult, num_res_blocks,
attn_resolutions, dropout, resamp_with_conv, conditional, fir, fir_kernel, skip_rescale,
resblock_type, progressive, progressive_input, progressive_combine, embedding_type, init_scale,
nonlinearity, scale_by_sigma, fourier_scale (Fourier only), sigma_min/sigma_max/num_scales
(positional + scale_by_sigma only)}, training.continuous (Fourier only).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from models import layers
from models import layerspp
from models import utils
from errors import UserError

_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
_COMBINE = ("sum", "cat")
_EMBEDDING = ("fourier", "positional")
_RESBLOCK = ("ddpm", "biggan")


def _choice(config, field: str, allowed) -> str:
  value = str(getattr(config.model, field)).lower()
  if value not in allowed:
    raise UserError(f"config.model.{field}={getattr(config.model, field)!r} is not supported; "
                     f"choose one of {list(allowed)}.")
  return value


@utils.register_model(name="ncsnpp")
class NCSNpp(nn.Module):
  """NCSN++ U-Net. `__call__(x, time_cond, train)`: x (B, H, W, C) float32, time_cond (B,).

  time_cond is the noise level sigma for the Fourier embedding (continuous VE), the time label
  (999·t for continuous VP/subVP) or an int index into `utils.get_sigmas(config)` for the
  positional embedding. Returns (B, H, W, C); divided by the sigma when `model.scale_by_sigma`.
  """
  config: Any

  @nn.compact
  def __call__(self, x, time_cond, train: bool = False):
    config = self.config
    m = config.model
    act = layers.get_act(config)

    nf = m.nf
    ch_mult = tuple(m.ch_mult)
    num_res_blocks = m.num_res_blocks
    attn_resolutions = tuple(m.attn_resolutions)
    dropout = m.dropout
    resamp_with_conv = m.resamp_with_conv
    num_resolutions = len(ch_mult)
    conditional = m.conditional
    fir = m.fir
    fir_kernel = tuple(m.fir_kernel)
    skip_rescale = m.skip_rescale
    init_scale = m.init_scale
    resblock_type = _choice(config, "resblock_type", _RESBLOCK)
    progressive = _choice(config, "progressive", _PROGRESSIVE)
    progressive_input = _choice(config, "progressive_input", _PROGRESSIVE_INPUT)
    combine_method = _choice(config, "progressive_combine", _COMBINE)
    embedding_type = _choice(config, "embedding_type", _EMBEDDING)

    # Noise-level / time embedding.
    if embedding_type == "fourier":
      training = config.get("training", None)
      if training is not None and not training.get("continuous", True):
        raise UserError("config.model.embedding_type='fourier' needs continuous training "
                         "(config.training.continuous=True): its labels are sigmas.")
      used_sigmas = time_cond
      temb = layerspp.GaussianFourierProjection(
          embedding_size=nf, scale=m.fourier_scale)(jnp.log(used_sigmas))
    else:
      used_sigmas = None  # looked up below, only when needed
      temb = layers.get_timestep_embedding(time_cond, nf)

    if conditional:
      temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))
    else:
      temb = None

    AttnBlock = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                  skip_rescale=skip_rescale)
    Upsample = functools.partial(layerspp.Upsample, with_conv=resamp_with_conv, fir=fir,
                                 fir_kernel=fir_kernel)
    Downsample = functools.partial(layerspp.Downsample, with_conv=resamp_with_conv, fir=fir,
                                   fir_kernel=fir_kernel)
    # The pyramids resample with a conv only in 'residual' mode.
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                         with_conv=progressive == "residual")
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                           with_conv=progressive_input == "residual")
    combiner = functools.partial(layerspp.Combine, method=combine_method)
    if resblock_type == "ddpm":
      ResnetBlock = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=dropout,
                                      init_scale=init_scale, skip_rescale=skip_rescale)
    else:
      ResnetBlock = functools.partial(layerspp.ResnetBlockBigGANpp, act=act, dropout=dropout,
                                      fir=fir, fir_kernel=fir_kernel, init_scale=init_scale,
                                      skip_rescale=skip_rescale)

    def rescaled_sum(a, b):
      return (a + b) / np.sqrt(2.0) if skip_rescale else a + b

    def output_conv(h, out_ch, **kwargs):
      """GroupNorm + act + 3x3 conv, the head of every output-pyramid level."""
      h = act(nn.GroupNorm(num_groups=min(h.shape[-1] // 4, 32))(h))
      return layerspp.conv3x3(h, out_ch, **kwargs)

    if not config.data.centered:
      x = 2 * x - 1.  # data in [0, 1] -> [-1, 1]
    channels = x.shape[-1]

    # Downsampling path.
    input_pyramid = x if progressive_input != "none" else None
    hs = [layerspp.conv3x3(x, nf)]
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)

      if i_level != num_resolutions - 1:
        if resblock_type == "ddpm":
          h = Downsample()(hs[-1])
        else:
          h = ResnetBlock(down=True)(hs[-1], temb, train)

        if progressive_input == "input_skip":
          input_pyramid = pyramid_downsample()(input_pyramid)
          h = combiner()(input_pyramid, h)
        elif progressive_input == "residual":
          input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
          input_pyramid = rescaled_sum(input_pyramid, h)
          h = input_pyramid
        hs.append(h)

    h = hs[-1]
    h = ResnetBlock()(h, temb, train)
    h = AttnBlock()(h)
    h = ResnetBlock()(h, temb, train)

    # Upsampling path.
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in attn_resolutions:
        h = AttnBlock()(h)

      if progressive == "output_skip":
        if i_level == num_resolutions - 1:
          pyramid = output_conv(h, channels, bias=True, init_scale=init_scale)
        else:
          pyramid = pyramid_upsample()(pyramid)
          pyramid = pyramid + output_conv(h, channels, bias=True, init_scale=init_scale)
      elif progressive == "residual":
        if i_level == num_resolutions - 1:
          pyramid = output_conv(h, h.shape[-1], bias=True)
        else:
          pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
          pyramid = rescaled_sum(pyramid, h)
          h = pyramid

      if i_level != 0:
        if resblock_type == "ddpm":
          h = Upsample()(h)
        else:
          h = ResnetBlock(up=True)(h, temb, train)

    assert not hs

    if progressive == "output_skip":
      h = pyramid
    else:
      h = output_conv(h, channels, init_scale=init_scale)

    if m.scale_by_sigma:
      if used_sigmas is None:
        sigmas = jnp.asarray(utils.get_sigmas(config), dtype=jnp.float32)
        used_sigmas = sigmas[time_cond.astype(jnp.int32)]
      h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return h
