"""Analytic Gaussian benchmark, FFHQ-like target at 32 px, continuous VE SDE.

sigma_max = 50: score_sde's value for 32 px data (CIFAR-10). It must exceed the largest distance
between two data points; for this target (dimension 3072, per-pixel std 0.27) two draws lie about
sqrt(2·3072)·0.27 ≈ 21 apart, and the largest of ~10⁵ pairwise distances (450 draws) is about 33.
"""
from configs.analytic import get_analytic_config


def get_config():
  return get_analytic_config(image_size=32, sigma_max=50)
