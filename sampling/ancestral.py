"""Ancestral samplers on the denoiser view: Euler ancestral (k-diffusion's `sample_euler_ancestral`)
and DDIM (Song et al. 2021), which in σ and x̃ is the same step with its own η.

One step from σ to σ' with η: σ_up = min(σ', η sqrt(σ'² (σ² − σ'²) / σ²)), σ_down =
sqrt(σ'² − σ_up²); x̃ ← x̃ + (σ_down − σ) (x̃ − D(x̃; σ)) / σ + s_noise · σ_up · ε. With η = 0 it is
a deterministic Euler step (DDIM's η = 0); with η = 1 ancestral sampling (DDPM's posterior for VP).
"""
import jax.numpy as jnp

import sde_lib
from sampling.denoiser import DenoiserSampler
from sampling.interface import SAMPLERS
from errors import UserError


def ancestral_step(sigma, sigma_next, eta):
  """(σ_down, σ_up) of a step from σ to σ_next (arrays; σ_up = 0 where σ_next = 0)."""
  safe = jnp.maximum(sigma, 1e-30)
  sigma_up = jnp.minimum(sigma_next, eta * jnp.sqrt(jnp.maximum(
      sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / safe ** 2, 0.0)))
  sigma_down = jnp.sqrt(jnp.maximum(sigma_next ** 2 - sigma_up ** 2, 0.0))
  return sigma_down, sigma_up


@SAMPLERS.register("euler_ancestral")
class EulerAncestralSampler(DenoiserSampler):
  """Euler ancestral with `sampling.eta` (1 = ancestral) and `sampling.s_noise`; n evaluations."""

  eta_field = "config.sampling.eta"

  def __init__(self, setup, schedule="karras", rho=7.0, eta=1.0, s_noise=1.0):
    if not eta >= 0:
      raise UserError(f"{self.eta_field} must be >= 0, got {eta!r}.")
    if not s_noise >= 0:
      raise UserError(f"config.sampling.s_noise must be >= 0, got {s_noise!r}.")
    super().__init__(setup, schedule, rho)
    self.eta, self.s_noise = float(eta), float(s_noise)

  @classmethod
  def from_config(cls, config, setup):
    return cls(setup, **cls.schedule_fields(config), eta=float(config.sampling.eta),
               s_noise=float(config.sampling.s_noise))

  def method_settings(self):
    return dict(eta=self.eta, s_noise=self.s_noise)

  def step_fn(self, score_fn):
    sigmas = self.sigma_array()

    def step(i, state):
      sigma, sigma_next = sigmas[i], sigmas[i + 1]
      denoised = self.view.denoise(score_fn, state.x, sigma)
      sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
      # Euler step down to σ_down, then add noise back up to σ_next.
      x = state.x + (sigma_down - sigma) * (state.x - denoised) / sigma
      noise = state.noise
      if self.eta > 0 and self.s_noise > 0:
        eps, noise = noise.draw()
        x = x + self.s_noise * sigma_up * eps
      return state._replace(x=noise.constrain(x), noise=noise)

    return step


@SAMPLERS.register("ddim")
class DDIMSampler(EulerAncestralSampler):
  """DDIM with `sampling.ddim_eta` (0 = deterministic) for VP and subVP models."""

  eta_field = "config.sampling.ddim_eta"

  def __init__(self, setup, schedule="karras", rho=7.0, eta=0.0, s_noise=1.0):
    if isinstance(setup.training_sde or setup.sde, sde_lib.VESDE):
      raise UserError("config.sampling.method='ddim' is defined for vpsde and subvpsde; for a "
                       "VE model use 'euler' (DDIM's η = 0 step) or 'euler_ancestral'.")
    super().__init__(setup, schedule, rho, eta, s_noise)

  @classmethod
  def from_config(cls, config, setup):
    return cls(setup, **cls.schedule_fields(config), eta=float(config.sampling.ddim_eta),
               s_noise=float(config.sampling.s_noise))
