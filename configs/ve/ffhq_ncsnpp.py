"""FFHQ 1024 px with TDAS: the entry point `python main.py --config configs/ve/ffhq_ncsnpp.py ...`.

Network and SDE are exactly those of `ve/ffhq_ncsnpp_continuous.py` (NCSN++, continuous VE SDE,
sigma_max 1348, 2000 scales), so score_sde's released FFHQ checkpoint loads unchanged. On top of
it, the TDAS paper's FFHQ-1024 setting (Table 4): 100 sampler steps and a DFT zoned frequency
filter with lambda1 = 0.955, lambda2 = 0.878, r1 = 0.400, r2 = 0.455.
"""
from configs.ve import ffhq_ncsnpp_continuous


def get_config():
  config = ffhq_ncsnpp_continuous.get_config()

  sampling = config.sampling
  sampling.num_steps = 100

  tdas = sampling.tdas
  tdas.enabled = True
  tdas.transform = 'dft'
  tdas.lambda1 = 0.955
  tdas.lambda2 = 0.878
  tdas.r1 = 0.400
  tdas.r2 = 0.455
  return config
