"""NCSNv2 on CelebA (64 px), released by ermongroup/ncsnv2.

Its values are `RELEASES['ncsnv2_celeba']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsnv2_celeba')
