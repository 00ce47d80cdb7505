"""NCSNv2 on FFHQ (256 px, NCSNv2Deepest), released by ermongroup/ncsnv2.

Its values are `RELEASES['ncsnv2_ffhq']` in configs/ermongroup/common.py.
"""
from configs.ermongroup.common import release_config


def get_config():
  return release_config('ncsnv2_ffhq')
