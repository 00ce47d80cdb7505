"""Analytic Gaussian benchmark, LSUN-like target at 256 px, continuous VE SDE.

sigma_max = 348: the released FFHQ-256 / CelebA-HQ-256 value (LSUN bedroom/church use 378/380).
Two draws of this target lie about sqrt(2·196608)·0.27 ≈ 169 apart, and the largest of ~4·10⁴
pairwise distances (300 draws) is about 226, below 348. Greyer mean than FFHQ,
(0.47, 0.46, 0.44), with a weaker centre-to-corner gradient, 0.05.
"""
from configs.analytic import get_analytic_config


def get_config():
  return get_analytic_config(image_size=256, sigma_max=348, dataset='LSUN',
                             target_mean=(0.47, 0.46, 0.44), target_mean_radial=0.05,
                             snr=0.075)
