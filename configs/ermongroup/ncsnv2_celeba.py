"""NCSNv2 on CelebA (64 px), released by ermongroup/ncsnv2.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsnv2',
      dataset='CELEBA',
      image_size=64,
      channels=3,
      sigma_begin=90,
      sigma_end=0.01,
      num_classes=500,
      ngf=128,
      step_lr=3.3e-06,
      n_steps_each=5,
      denoise=True,
      n_iters=210001,
      sampling_batch_size=64)
