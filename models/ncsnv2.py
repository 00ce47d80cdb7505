"""NCSNv2 (Song & Ermon 2020) and NCSN v1 (Song & Ermon 2019) score networks, as in score_sde.

Registered models (`config.model.name`):
- 'ncsnv2_64'  (`NCSNv2`):     images up to ~96 px (CIFAR-10 32 px, CelebA 64 px); 1 downsampling.
- 'ncsnv2_128' (`NCSNv2_128`): 96-128 px (LSUN bedroom/church 128 px); 2 downsamplings.
- 'ncsnv2_256' (`NCSNv2_256`): 128-256 px; 3 downsamplings.
- 'ncsn'       (`NCSN`):       NCSN v1, the 'ncsnv2_64' layout with noise-conditional
                               InstanceNorm++ everywhere (one embedding row per noise level).

The original PyTorch releases (github.com/ermongroup/ncsn, ermongroup/ncsnv2) compute three things
differently from score_sde's JAX port; their networks are registered as they compute them:
- 'ermongroup_ncsn' (`ErmongroupNCSN`): NCSN v1's CondRefineNetDilated;
- 'ermongroup_ncsnv2' (`ErmongroupNCSNv2`): NCSNv2 (CIFAR-10, CelebA);
- 'ermongroup_ncsnv2_deeper' (`ErmongroupNCSNv2Deeper`): NCSNv2Deeper (LSUN);
- 'ermongroup_ncsnv2_deepest' (`ErmongroupNCSNv2Deepest`): NCSNv2Deepest (FFHQ).
The differences: (1) in the 4-stage nets the third refine block is nf wide (2nf in score_sde
JAX); (2) MSF's bilinear upsampling aligns corners (`align_corners=True`), score_sde JAX uses
half-pixel centres; (3) InstanceNorm++ takes the unbiased variance of the channel means. Their
outputs are not divided by sigma in NCSN v1 (`model.scale_by_sigma=False`).

All are RefineNets: a ResNet backbone of `ResidualBlock`s in stages (two blocks per stage; the
first block of each later stage has resample='down'; in the deepest two stages it is dilated
(dilation 2, then 4) and keeps the resolution), then one `RefineBlock` per stage from the deepest
to the finest, a final norm -> act -> 3x3 conv back to the image channels.

Call: `model.apply(variables, x, labels, train=False)`
- x: (B, H, W, C) float32 in [0, 1] (`data.centered=False`: the network sees 2x - 1) or already
  centred in [-1, 1] (`data.centered=True`).
- labels: (B,) int32 indices into `models.utils.get_sigmas(config)` (sigma_max first).
- returns (B, H, W, C): the network output divided by sigmas[labels] when `model.scale_by_sigma`
  (the released NCSNv2 configs all set it), i.e. the score of the VE-perturbed data.
`train` is accepted for the common model signature; these networks have no dropout or batch
statistics, so it changes nothing.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from models import utils
from models.normalization import get_normalization
from models.refinenet_layers import (CondRefineBlock, ConditionalResidualBlock, RefineBlock,
                                     ResidualBlock, get_act, ncsn_conv3x3, resize_method)
from errors import UserError

# Backbone stages, finest first: (channels as a multiple of nf, resample of the stage's first
# block, dilation of both blocks). The first block of a stage changes the channel count.
_BACKBONE_64 = ((1, None, 1), (2, 'down', 1), (2, 'down', 2), (2, 'down', 4))
_BACKBONE_128 = ((1, None, 1), (2, 'down', 1), (2, 'down', 1), (4, 'down', 2), (4, 'down', 4))
_BACKBONE_256 = ((1, None, 1), (2, 'down', 1), (2, 'down', 1), (2, 'down', 1), (4, 'down', 2),
                 (4, 'down', 4))
# RefineBlock channels (multiples of nf), one per stage, deepest first.
_REFINE_64 = (2, 2, 2, 1)
_REFINE_128 = (4, 2, 2, 1, 1)
_REFINE_256 = (4, 2, 2, 2, 1, 1)
# The ermongroup PyTorch 4-stage nets: refine3 is nf wide.
_REFINE_64_ERMONGROUP = (2, 2, 1, 1)


def _downsampling_factor(backbone):
  """How much the backbone shrinks H and W: 2 per undilated 'down' stage."""
  return 2 ** sum(1 for _, resample, dilation in backbone if resample == 'down' and dilation == 1)


def refinenet_score(config, x, labels, backbone, refine, conditional: bool,
                    pytorch_numerics: bool = False):
  """Forward pass shared by the NCSN RefineNets; call it inside a module's `nn.compact` method.

  Submodules are created in the released order (so they get the released names): Conv_0, the
  backbone's ResidualBlock_0..2S-1, RefineBlock_0 (deepest) .. RefineBlock_{S-1}, the final norm,
  Conv_1.

  Args:
    config: score_sde config (`model.nf/nonlinearity/normalization/interpolation/...`).
    x: (B, H, W, C) images; H and W divisible by the backbone's downsampling factor.
    labels: (B,) int32 noise-level indices.
    backbone, refine: stage tables (see `_BACKBONE_*`, `_REFINE_*`).
    conditional: NCSN v1 (noise-conditional normalisation everywhere) instead of NCSNv2.
    pytorch_numerics: compute as the ermongroup PyTorch code (align-corners upsampling in MSF,
      unbiased channel-mean variance in InstanceNorm++).
  Returns:
    (B, H, W, C) float32.
  """
  nf = config.model.nf
  act = get_act(config)
  normalizer = get_normalization(config, conditional=conditional,
                                 channel_means_ddof=1 if pytorch_numerics else 0)
  interpolation = config.model.interpolation
  resize_method(interpolation)  # fail early, naming the config field
  factor = _downsampling_factor(backbone)
  if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
    raise UserError(
        f"config.model.name={config.model.name!r} needs NHWC images with H and W divisible by "
        f"{factor}; got x of shape {tuple(x.shape)} (config.data.image_size="
        f"{config.data.get('image_size', None)}).")

  def residual_block(h, features, resample, dilation):
    kwargs = dict(resample=resample, act=act, normalization=normalizer, dilation=dilation)
    if conditional:
      return ConditionalResidualBlock(features, **kwargs)(h, labels)
    return ResidualBlock(features, **kwargs)(h)

  def refine_block(inputs, features, start, end):
    kwargs = dict(act=act, interpolation=interpolation, start=start, end=end,
                  align_corners=pytorch_numerics)
    output_shape = tuple(inputs[0].shape[1:3])
    if conditional:
      block = CondRefineBlock(output_shape, features, normalizer=normalizer, **kwargs)
      return block(inputs, labels)
    return RefineBlock(output_shape, features, **kwargs)(inputs)

  h = x if config.data.centered else 2 * x - 1.
  h = ncsn_conv3x3(h, nf, stride=1, bias=True)

  # Backbone: two residual blocks per stage; the stage outputs feed the refine blocks.
  stage_outputs = []
  for mult, resample, dilation in backbone:
    h = residual_block(h, mult * nf, resample, dilation)
    h = residual_block(h, mult * nf, None, dilation)
    stage_outputs.append(h)

  # Refinement, deepest stage first: RefineBlock([stage output, previous refinement]).
  ref = None
  for i, (mult, skip) in enumerate(zip(refine, reversed(stage_outputs))):
    inputs = [skip] if ref is None else [skip, ref]
    ref = refine_block(inputs, mult * nf, start=(i == 0), end=(i == len(refine) - 1))

  h = normalizer()(ref, labels) if conditional else normalizer()(ref)
  h = ncsn_conv3x3(act(h), x.shape[-1])

  if config.model.get('scale_by_sigma', True):
    sigmas = jnp.asarray(utils.get_sigmas(config), dtype=jnp.float32)
    h = h / sigmas[labels].reshape((x.shape[0],) + (1,) * (x.ndim - 1))
  return h


class _RefineNetScoreModel(nn.Module):
  """Common body of the registered NCSN RefineNets; subclasses set the stage tables."""
  config: ml_collections.ConfigDict
  backbone = _BACKBONE_64
  refine = _REFINE_64
  conditional = False
  pytorch_numerics = False
  # These networks index a table of noise levels: labels are always int32 indices, even where a
  # released config says `training.continuous = True` (ve/ncsnv2/bedroom.py misspells the field).
  discrete_labels_only = True

  @nn.compact
  def __call__(self, x, labels, train: bool = True) -> Any:
    del train  # no dropout / batch statistics in these networks
    return refinenet_score(self.config, x, labels, self.backbone, self.refine, self.conditional,
                           self.pytorch_numerics)


@utils.register_model(name='ncsnv2_64')
class NCSNv2(_RefineNetScoreModel):
  """NCSNv2 for images up to ~96 px: 4 stages (nf, 2nf, 2nf dilated 2, 2nf dilated 4), H/2 deep."""
  backbone = _BACKBONE_64
  refine = _REFINE_64


@utils.register_model(name='ncsn')
class NCSN(_RefineNetScoreModel):
  """NCSN v1: the 'ncsnv2_64' layout with noise-conditional InstanceNorm++
  (`ConditionalInstanceNorm2dPlus`) in every residual block, RCU, CRP (average pooling) and MSF,
  and before the output conv."""
  backbone = _BACKBONE_64
  refine = _REFINE_64
  conditional = True


@utils.register_model(name='ncsnv2_128')
class NCSNv2_128(_RefineNetScoreModel):  # pylint: disable=invalid-name
  """NCSNv2 for 96-128 px: 5 stages (nf, 2nf, 2nf, 4nf dilated 2, 4nf dilated 4), H/4 deep."""
  backbone = _BACKBONE_128
  refine = _REFINE_128


@utils.register_model(name='ncsnv2_256')
class NCSNv2_256(_RefineNetScoreModel):  # pylint: disable=invalid-name
  """NCSNv2 for 128-256 px: 6 stages (nf, 2nf, 2nf, 2nf, 4nf dilated 2, 4nf dilated 4), H/8 deep."""
  backbone = _BACKBONE_256
  refine = _REFINE_256


@utils.register_model(name='ermongroup_ncsn')
class ErmongroupNCSN(_RefineNetScoreModel):
  """NCSN v1 as github.com/ermongroup/ncsn computes it (`CondRefineNetDilated`): the 'ncsn'
  layout with refine3 nf wide, align-corners MSF upsampling and unbiased channel-mean variance."""
  backbone = _BACKBONE_64
  refine = _REFINE_64_ERMONGROUP
  conditional = True
  pytorch_numerics = True


@utils.register_model(name='ermongroup_ncsnv2')
class ErmongroupNCSNv2(_RefineNetScoreModel):
  """NCSNv2 as github.com/ermongroup/ncsnv2 computes it (CIFAR-10, CelebA): 'ncsnv2_64' with
  refine3 nf wide, align-corners MSF upsampling and unbiased channel-mean variance."""
  backbone = _BACKBONE_64
  refine = _REFINE_64_ERMONGROUP
  pytorch_numerics = True


@utils.register_model(name='ermongroup_ncsnv2_deeper')
class ErmongroupNCSNv2Deeper(_RefineNetScoreModel):
  """ermongroup's NCSNv2Deeper (LSUN): the 'ncsnv2_128' layout with PyTorch's numerics."""
  backbone = _BACKBONE_128
  refine = _REFINE_128
  pytorch_numerics = True


@utils.register_model(name='ermongroup_ncsnv2_deepest')
class ErmongroupNCSNv2Deepest(_RefineNetScoreModel):
  """ermongroup's NCSNv2Deepest (FFHQ): the 'ncsnv2_256' layout with PyTorch's numerics."""
  backbone = _BACKBONE_256
  refine = _REFINE_256
  pytorch_numerics = True
