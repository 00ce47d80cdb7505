"""NCSNv2 on LSUN church_outdoor (64 px, NCSNv2Deeper), released by ermongroup/ncsnv2.

Its values are `RELEASES['ncsnv2_church']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsnv2_church')
