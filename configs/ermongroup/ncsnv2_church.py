"""NCSNv2 on LSUN church_outdoor (64 px, NCSNv2Deeper), released by ermongroup/ncsnv2.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsnv2_deeper',
      dataset='LSUN',
      category='church_outdoor',
      image_size=64,
      channels=3,
      sigma_begin=140,
      sigma_end=0.01,
      num_classes=788,
      ngf=128,
      step_lr=4.9e-06,
      n_steps_each=4,
      denoise=True,
      n_iters=200001,
      sampling_batch_size=96)
