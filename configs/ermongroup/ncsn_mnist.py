"""NCSN v1 on MNIST (28 px, grey), released by ermongroup/ncsn.

Its values are `RELEASES['ncsn_mnist']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsn_mnist')
