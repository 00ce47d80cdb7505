"""DDPM score network (Ho et al. 2020) as released in score_sde, registered as 'ddpm'.

Same flax variable tree and numerics as score_sde's JAX `DDPM`, so its checkpoints load unchanged.
Config fields read: data.centered, model.{nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
resamp_with_conv, conditional, nonlinearity, normalization, scale_by_sigma,
sigma_min/sigma_max/num_scales (scale_by_sigma only)}.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models import layers
from models import utils


@utils.register_model(name="ddpm")
class DDPM(nn.Module):
  """DDPM U-Net. `__call__(x, labels, train)`: x (B, H, W, C) float32, labels (B,) -> (B, H, W, C).

  labels are the timesteps fed to the sinusoidal embedding (int indices for discrete models,
  999·t for continuous VP/subVP). With `model.scale_by_sigma` (discrete VE) the output is divided
  by `utils.get_sigmas(config)[labels]`.
  """
  config: Any

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    config = self.config
    m = config.model
    act = layers.get_act(config)
    normalize = layers.get_normalization(config)

    nf = m.nf
    ch_mult = tuple(m.ch_mult)
    num_res_blocks = m.num_res_blocks
    attn_resolutions = tuple(m.attn_resolutions)
    resamp_with_conv = m.resamp_with_conv
    num_resolutions = len(ch_mult)

    AttnBlock = functools.partial(layers.AttnBlock, normalize=normalize)
    ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, normalize=normalize,
                                    dropout=m.dropout)

    if m.conditional:
      temb = layers.get_timestep_embedding(labels, nf)
      temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
      temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))
    else:
      temb = None

    h = x if config.data.centered else 2 * x - 1.  # data in [0, 1] -> [-1, 1]

    # Downsampling path.
    hs = [layers.ddpm_conv3x3(h, nf)]
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        hs.append(layers.Downsample(with_conv=resamp_with_conv)(hs[-1]))

    h = hs[-1]
    h = ResnetBlock()(h, temb, train)
    h = AttnBlock()(h)
    h = ResnetBlock()(h, temb, train)

    # Upsampling path.
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in attn_resolutions:
        h = AttnBlock()(h)
      if i_level != 0:
        h = layers.Upsample(with_conv=resamp_with_conv)(h)

    assert not hs

    # The released head uses the normaliser's default group count (32), not min(C // 4, 32).
    h = act(normalize()(h))
    h = layers.ddpm_conv3x3(h, x.shape[-1], init_scale=0.0)

    if m.scale_by_sigma:
      sigmas = jnp.asarray(utils.get_sigmas(config), dtype=jnp.float32)
      h = h / sigmas[labels.astype(jnp.int32)].reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return h
