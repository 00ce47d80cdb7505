"""NCSNv2 on FFHQ (256 px, NCSNv2Deepest), released by ermongroup/ncsnv2.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsnv2_deepest',
      dataset='FFHQ',
      image_size=256,
      channels=3,
      sigma_begin=348,
      sigma_end=0.01,
      num_classes=2311,
      ngf=128,
      step_lr=9e-07,
      n_steps_each=3,
      denoise=True,
      n_iters=80001,
      batch_size=32,
      eps=0.001,
      sampling_batch_size=36)
