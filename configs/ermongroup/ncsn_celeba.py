"""NCSN v1 on CelebA (32 px, center-cropped), released by ermongroup/ncsn.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsn',
      dataset='CELEBA',
      image_size=32,
      channels=3,
      sigma_begin=1,
      sigma_end=0.01,
      num_classes=10,
      ngf=128,
      step_lr=2e-05,
      n_steps_each=100,
      denoise=False,
      output='before_last_step',
      lr=0.001,
      n_iters=200001,
      sampling_batch_size=25)
