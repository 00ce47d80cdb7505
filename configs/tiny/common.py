"""Shared base of the tiny CPU configs: CIFAR-10 defaults shrunk to run in seconds on one CPU.

Each tiny config is a valid score_sde config (same fields as a released one of its family), only
smaller: 16 px images (32 for NCSNv2), nf 8 (32 for DDPM), one residual block per resolution, 100
noise scales, and small batches. It carries every project field through `get_default_configs()`.
"""
from configs.default_cifar10_configs import get_default_configs


def tiny_default_configs(image_size=16, num_scales=100):
  """CIFAR-10 defaults with sizes, batch sizes and run lengths reduced for CPU tests and demos."""
  config = get_default_configs()

  training = config.training
  training.batch_size = 8
  training.n_iters = 21
  training.snapshot_freq = 10
  training.log_freq = 1
  training.eval_freq = 5
  training.snapshot_freq_for_preemption = 5
  training.snapshot_sampling = False
  training.n_jitted_steps = 1

  evaluate = config.eval
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 2
  evaluate.batch_size = 4
  evaluate.num_samples = 8

  config.data.image_size = image_size

  config.model.num_scales = num_scales
  config.model.nf = 8  # NCSNv2 reads only this size; U-Net models also call `set_tiny_unet`
  return config


def set_tiny_unet(model):
  """U-Net sizes of the tiny DDPM/NCSN++/DDPM++ configs: 16 px -> 8 px, attention at 8 px."""
  model.nf = 8
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)


def set_ncsnpp_common(model):
  """The NCSN++/DDPM++ fields every released config of that family sets the same way."""
  model.name = 'ncsnpp'
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.resamp_with_conv = True
  model.conditional = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.conv_size = 3
