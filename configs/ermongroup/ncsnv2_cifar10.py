"""NCSNv2 on CIFAR-10 (32 px), released by ermongroup/ncsnv2.

Its values are `RELEASES['ncsnv2_cifar10']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsnv2_cifar10')
