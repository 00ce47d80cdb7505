"""The methods the sampler benchmarks rank, their labels, and how many steps fit an NFE budget."""

METHODS = ("pc", "euler", "heun", "edm", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde",
           "dpmpp_3m_sde")
# Network evaluations per step: PC with one Langevin corrector step takes 2; Heun and EDM take
# 2n − 1 for n steps.
LABELS = {"pc": "PC (reverse diffusion + Langevin)", "euler": "Euler", "heun": "Heun",
          "edm": "EDM stochastic (S_churn 40)", "euler_ancestral": "Euler ancestral",
          "dpmpp_2m": "DPM-Solver++(2M)", "dpmpp_2m_sde": "DPM-Solver++(2M) SDE",
          "dpmpp_3m_sde": "DPM-Solver++(3M) SDE"}


def steps_for(method: str, nfe: int) -> int:
  """The number of steps that spends at most `nfe` network evaluations."""
  if method == "pc":
    return max(1, nfe // 2)
  if method in ("heun", "edm"):
    return max(1, (nfe + 1) // 2)
  return nfe


# `edm`'s churn in the benchmarks: EDM's setting for its VE models (Karras et al. 2022, Table 5).
EDM_CHURN = dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)


def configure(config, method: str, steps: int):
  """A copy of `config` that samples with `method` in `steps` steps (TDAS as the config says)."""
  config = config.copy_and_resolve_references()
  config.sampling.method = method
  config.sampling.num_steps = steps
  if method == "edm":
    config.sampling.edm.update(EDM_CHURN)
  return config
