"""Analytic Gaussian benchmark, FFHQ-like target at 64 px, continuous VE SDE.

sigma_max = 100: distances between draws scale with sqrt(dimension), i.e. with the side, so twice
the 32 px value. Two draws lie about sqrt(2·12288)·0.27 ≈ 42 apart, and the largest of ~10⁵
pairwise distances (450 draws) is about 61, well below 100.
"""
from configs.analytic import get_analytic_config


def get_config():
  return get_analytic_config(image_size=64, sigma_max=100)
