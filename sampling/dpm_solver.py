"""DPM-Solver++ (Lu et al. 2022) in the σ parameterisation k-diffusion publishes: the multistep
2M, its SDE variant 2M SDE (`midpoint` or `heun` solver type) and 3M SDE, on the denoiser view.

With λ = −log σ and h = λ(σ_{i+1}) − λ(σ_i), each step is exact for a denoiser that is constant
(first order) and corrects with the previous steps' denoised images (second and third order,
from the second and third step). The last step, to σ = 0, returns the denoised image. Each takes
one network evaluation per step; the SDE variants add s_noise · σ_{i+1} · sqrt(1 − e^{−2ηh}) · ε,
with ε from the noise source (k-diffusion draws it from a Brownian tree: the same marginal law).
"""
import jax.numpy as jnp

from sampling.denoiser import DenoiserSampler, SigmaState
from sampling.interface import SAMPLERS
from errors import UserError

SOLVER_TYPES = ("midpoint", "heun")


def _log_steps(sigmas):
  """h_i = log σ_i − log σ_{i+1} for each step, (n,); the last entry (to σ = 0) is meaningless
  and never used: that step returns the denoised image."""
  positive = jnp.where(sigmas > 0, sigmas, 1.0)
  lam = -jnp.log(positive)
  return lam[1:] - lam[:-1]


class _DPMSolverPP(DenoiserSampler):
  stochastic = True

  def __init__(self, setup, schedule="karras", rho=7.0, eta=1.0, s_noise=1.0,
               solver_type="midpoint"):
    if not eta >= 0:
      raise UserError(f"config.sampling.eta must be >= 0, got {eta!r}.")
    if not s_noise >= 0:
      raise UserError(f"config.sampling.s_noise must be >= 0, got {s_noise!r}.")
    if solver_type not in SOLVER_TYPES:
      raise UserError(f"config.sampling.solver_type={solver_type!r} must be one of "
                       f"{SOLVER_TYPES}.")
    super().__init__(setup, schedule, rho)
    self.eta = float(eta) if self.stochastic else 0.0
    self.s_noise, self.solver_type = float(s_noise), solver_type

  @classmethod
  def from_config(cls, config, setup):
    sampling = config.sampling
    return cls(setup, **cls.schedule_fields(config), eta=float(sampling.eta),
               s_noise=float(sampling.s_noise), solver_type=str(sampling.solver_type))

  def method_settings(self):
    return dict(eta=self.eta, s_noise=self.s_noise) if self.stochastic else {}

  def step_fn(self, score_fn):
    sigmas = self.sigma_array()
    steps = _log_steps(sigmas)  # h_i, (n,)

    def step(i, state):
      sigma, sigma_next = sigmas[i], sigmas[i + 1]
      denoised = self.view.denoise(score_fn, state.x, sigma)
      final = sigma_next == 0
      h = jnp.where(final, 1.0, steps[i])  # any finite value: the last step returns D
      x, noise = self.update(i, state, denoised, sigma, sigma_next, h, steps)
      # Denoising step: at σ = 0 the sample is the denoised image.
      x = jnp.where(final, denoised, x)
      return SigmaState(noise.constrain(x), denoised, state.denoised_1, noise)

    return step

  def add_noise(self, x, noise, sigma_next, h):
    if not (self.eta > 0 and self.s_noise > 0):
      return x, noise
    eps, noise = noise.draw()
    return x + eps * sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * self.eta * h)) * self.s_noise, noise


@SAMPLERS.register("dpmpp_2m")
class DPMSolverPP2M(_DPMSolverPP):
  """DPM-Solver++(2M), deterministic."""

  stochastic = False

  def update(self, i, state, denoised, sigma, sigma_next, h, steps):
    h_last = steps[jnp.maximum(i - 1, 0)]
    r = h_last / h
    # Second order from the previous denoised image (first order on the first step).
    corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * state.denoised_1
    denoised_d = jnp.where(i > 0, corrected, denoised)
    x = (sigma_next / sigma) * state.x - jnp.expm1(-h) * denoised_d
    return x, state.noise


@SAMPLERS.register("dpmpp_2m_sde")
class DPMSolverPP2MSDE(_DPMSolverPP):
  """DPM-Solver++(2M) SDE with `sampling.eta`, `sampling.s_noise`, `sampling.solver_type`."""

  def method_settings(self):
    return dict(super().method_settings(), solver_type=self.solver_type)

  def update(self, i, state, denoised, sigma, sigma_next, h, steps):
    eta_h = self.eta * h
    # First-order step of the SDE (exponential integrator in λ).
    x = (sigma_next / sigma) * jnp.exp(-eta_h) * state.x - jnp.expm1(-h - eta_h) * denoised
    r = steps[jnp.maximum(i - 1, 0)] / h
    if self.solver_type == "heun":
      weight = -jnp.expm1(-h - eta_h) / (-h - eta_h) + 1
    else:
      weight = -0.5 * jnp.expm1(-h - eta_h)
    x = jnp.where(i > 0, x + weight * (1 / r) * (denoised - state.denoised_1), x)
    return self.add_noise(x, state.noise, sigma_next, h)


@SAMPLERS.register("dpmpp_3m_sde")
class DPMSolverPP3MSDE(_DPMSolverPP):
  """DPM-Solver++(3M) SDE with `sampling.eta` and `sampling.s_noise`."""

  def update(self, i, state, denoised, sigma, sigma_next, h, steps):
    h_eta = h * (self.eta + 1)
    x = jnp.exp(-h_eta) * state.x - jnp.expm1(-h_eta) * denoised
    h_1 = steps[jnp.maximum(i - 1, 0)]
    h_2 = steps[jnp.maximum(i - 2, 0)]
    phi_2 = jnp.expm1(-h_eta) / h_eta + 1
    # Second order from one previous denoised image (step 2).
    r = h_1 / h
    second = x + phi_2 * (denoised - state.denoised_1) / r
    # Third order from two (from step 3 on).
    r0, r1 = h_1 / h, h_2 / h
    d1_0 = (denoised - state.denoised_1) / r0
    d1_1 = (state.denoised_1 - state.denoised_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    third = x + phi_2 * d1 - phi_3 * d2
    x = jnp.where(i >= 2, third, jnp.where(i == 1, second, x))
    return self.add_noise(x, state.noise, sigma_next, h)
