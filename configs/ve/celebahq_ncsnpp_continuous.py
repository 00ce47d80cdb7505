"""NCSN++ on CelebA-HQ 1024 px, continuous VE SDE, as released by score_sde.

The released config is FFHQ-1024's (`ve/ffhq_ncsnpp_continuous.py`) with another data set and,
as released, `training.reduce_mean = False` (FFHQ-1024's is True).
"""
from configs.ve import ffhq_ncsnpp_continuous


def get_config():
  config = ffhq_ncsnpp_continuous.get_config()

  training = config.training
  training.reduce_mean = False

  data = config.data
  data.dataset = 'CelebAHQ'
  data.tfrecords_path = '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'
  return config
