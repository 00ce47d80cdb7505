"""Analytic Gaussian benchmark, FFHQ-like target at 64 px, continuous VE SDE.

sigma_max = 100: distances between draws scale with sqrt(dimension), i.e. with the side, so twice
the 32 px value. Two draws lie about sqrt(2·12288)·0.27 ≈ 42 apart, and the largest of ~10⁵
pairwise distances (450 draws) is about 61, well below 100.

The TDAS numbers (off until `--tdas`) are those `benchmarks/analytic_tdas` calibrated for this
target at N' = 50 (a 40x speed-up, exact score): Dev = S(50) / S(2000) from 256 vanilla samples,
zones fitted by least squares (benchmarks/results/analytic_tdas_64.json).
"""
from configs.analytic import get_analytic_config


def get_config():
  config = get_analytic_config(image_size=64, sigma_max=100)
  tdas = config.sampling.tdas
  tdas.transform = 'dct'
  tdas.r1, tdas.r2, tdas.lambda1, tdas.lambda2 = 0.0, 0.38, 0.942, 0.987
  return config
