"""NCSNv2 on CIFAR-10 (32 px), released by ermongroup/ncsnv2.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsnv2',
      dataset='CIFAR10',
      image_size=32,
      channels=3,
      sigma_begin=50,
      sigma_end=0.01,
      num_classes=232,
      ngf=128,
      step_lr=6.2e-06,
      n_steps_each=5,
      denoise=True,
      n_iters=300001,
      sampling_batch_size=100)
