"""NCSN v1 on CIFAR-10 (32 px), released by ermongroup/ncsn.

Its values are `RELEASES['ncsn_cifar10']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsn_cifar10')
