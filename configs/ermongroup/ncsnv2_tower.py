"""NCSNv2 on LSUN tower (128 px, NCSNv2Deeper), released by ermongroup/ncsnv2.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsnv2_deeper',
      dataset='LSUN',
      category='tower',
      image_size=128,
      channels=3,
      sigma_begin=190,
      sigma_end=0.01,
      num_classes=1086,
      ngf=128,
      step_lr=1.8e-06,
      n_steps_each=3,
      denoise=True,
      n_iters=150001,
      sampling_batch_size=36)
