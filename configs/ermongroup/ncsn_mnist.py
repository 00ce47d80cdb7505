"""NCSN v1 on MNIST (28 px, grey), released by ermongroup/ncsn.

The values of its .yml (data, model, sampling, optim) and of its runner's sampler;
see configs/ermongroup/common.py.
"""
from configs.ermongroup.common import ermongroup_config


def get_config():
  return ermongroup_config(
      network='ermongroup_ncsn',
      dataset='MNIST',
      image_size=28,
      channels=1,
      sigma_begin=1,
      sigma_end=0.01,
      num_classes=10,
      ngf=64,
      step_lr=2e-05,
      n_steps_each=100,
      denoise=False,
      output='before_last_step',
      lr=0.001,
      n_iters=200001,
      random_flip=False,
      sampling_batch_size=25)
