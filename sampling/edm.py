"""EDM's samplers (Karras et al. 2022): Euler and Heun (Algorithm 1), and the stochastic sampler
(Algorithm 2), on the denoiser view (`sampling.denoiser`).

`heun` and `edm` take 2n − 1 network evaluations for n steps (the last step, to σ = 0, is an
Euler step); `euler` takes n. The churn noise of `edm` comes from the noise source, so TDAS
colours it.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from sampling.denoiser import DenoiserSampler
from sampling.interface import SAMPLERS
from errors import UserError


class _EDMSampler(DenoiserSampler):
  """EDM Algorithm 2; with S_churn = 0 it is Algorithm 1 (`second_order` picks Heun or Euler)."""

  second_order = True

  def __init__(self, setup, schedule="karras", rho=7.0, S_churn=0.0, S_tmin=0.0,
               S_tmax=math.inf, S_noise=1.0):
    for name, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
      if not value >= 0:
        raise UserError(f"config.sampling.edm.{name} must be >= 0, got {value!r}.")
    if not S_tmax >= S_tmin:
      raise UserError(f"config.sampling.edm.S_tmax={S_tmax!r} must be >= S_tmin={S_tmin!r}.")
    super().__init__(setup, schedule, rho)
    if self.second_order:  # no correction on the last step, to σ = 0
      self.nfe = 2 * self.num_steps - 1
    self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = S_churn, S_tmin, S_tmax, S_noise
    # γ_i = min(S_churn / n, √2 − 1) where S_tmin <= σ_i <= S_tmax, else 0 (per step, static).
    sigmas = self.sigmas[:-1]
    gammas = np.where((S_tmin <= sigmas) & (sigmas <= S_tmax),
                      min(S_churn / self.num_steps, math.sqrt(2.0) - 1.0), 0.0)
    # σ̂_i = round_sigma(σ_i + γ_i σ_i): the noise level each step is raised to.
    self.sigma_hats = self.view.round_sigma(sigmas * (1.0 + gammas))
    self.stochastic = S_churn > 0

  uses_churn = True

  @classmethod
  def from_config(cls, config, setup):
    edm = config.sampling.edm
    churn = dict(S_churn=float(edm.S_churn), S_tmin=float(edm.S_tmin), S_tmax=float(edm.S_tmax),
                 S_noise=float(edm.S_noise)) if cls.uses_churn else {}
    return cls(setup, **cls.schedule_fields(config), **churn)

  def method_settings(self):
    if not self.uses_churn:
      return {}
    return dict(S_churn=self.S_churn, S_tmin=self.S_tmin,
                S_tmax=None if math.isinf(self.S_tmax) else self.S_tmax,  # null: no upper bound
                S_noise=self.S_noise)

  def step_fn(self, score_fn):
    sigmas = self.sigma_array()
    sigma_hats = jnp.asarray(self.sigma_hats, jnp.float32)
    last = self.num_steps - 1

    def denoise(x, sigma):
      return self.view.denoise(score_fn, x, sigma)

    def step(i, state):
      t_cur, t_next = sigmas[i], sigmas[i + 1]
      x_cur, noise = state.x, state.noise
      t_hat = sigma_hats[i]
      if self.stochastic:
        # Increase noise temporarily: x̂ = x + sqrt(t̂² − t²) S_noise ε.
        eps, noise = noise.draw()
        x_hat = x_cur + jnp.sqrt(jnp.maximum(t_hat ** 2 - t_cur ** 2, 0.0)) * self.S_noise * eps
      else:
        x_hat = x_cur
      # Euler step.
      d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
      x_next = x_hat + (t_next - t_hat) * d_cur
      if self.second_order:
        # Apply 2nd order correction (not on the last step, which goes to σ = 0).
        def correct(x_next):
          d_prime = (x_next - denoise(x_next, t_next)) / t_next
          return x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x_next = jax.lax.cond(i < last, correct, lambda x: x, x_next)
      x_next = noise.constrain(x_next)
      return state._replace(x=x_next, noise=noise)

    return step


@SAMPLERS.register("edm")
class EDMStochasticSampler(_EDMSampler):
  """EDM Algorithm 2: Heun steps with churn (`sampling.edm.{S_churn, S_tmin, S_tmax, S_noise}`)."""


@SAMPLERS.register("heun")
class HeunSampler(_EDMSampler):
  """EDM Algorithm 1: deterministic Heun steps; 2n − 1 evaluations."""

  uses_churn = False


@SAMPLERS.register("euler")
class EulerSampler(_EDMSampler):
  """Deterministic Euler steps on the probability-flow ODE in σ; n evaluations."""

  uses_churn = False
  second_order = False
