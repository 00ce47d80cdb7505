"""NCSN v1 on CelebA (32 px, center-cropped), released by ermongroup/ncsn.

Its values are `RELEASES['ncsn_celeba']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsn_celeba')
