"""The denoiser view of a score model, its σ schedules, and the base of the samplers that use it.

EDM (Karras et al. 2022, §2 and App. C) writes every diffusion as x = s(t)·x̃ with x̃ = x₀ + σ(t)·ε:
the sampler works on x̃, σ(t) = std(t) / s(t), and the network enters only through the denoiser

    D(x̃; σ) = x̃ + σ² ∇_x̃ log p(x̃; σ) = x̃ + σ² s(t) · score(s(t)·x̃, t(σ)).

| SDE | s(t) | σ(t) |
|---|---|---|
| VE | 1 | σ_min (σ_max / σ_min)^t |
| VP | e^{m(t)} | sqrt(e^{−2m(t)} − 1) |
| subVP | e^{m(t)} | e^{−m(t)} − e^{m(t)} (its std 1 − e^{2m} is not square-rooted, docs/numerics.md §2) |

with m(t) = −¼ t² (β₁ − β₀) − ½ t β₀. A discrete-time network only knows its trained σ grid
(VE: the geometric σ_i; VP: sqrt(1/ᾱ_i − 1)): its σ's are rounded to that grid, as EDM's
`round_sigma` does, and each grid point is evaluated at the time whose label is exactly its index.
"""
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

import sde_lib
from sampling.interface import SteppedSampler
from errors import UserError

SCHEDULES = ("karras", "sde", "logsnr")


class DenoiserView:
  """D(x̃; σ) of the network behind `score_fn`, for the SDE it was trained with.

  Args:
    training_sde: the network's SDE with N = model.num_scales (a `sde_lib` SDE).
    continuous: whether the network takes continuous labels; if not, σ lives on its trained grid.
    eps: the smallest time of sampling (sets σ_min of VP and subVP).
  """

  def __init__(self, training_sde, continuous: bool, eps: float):
    self.sde = training_sde
    self.continuous = bool(continuous)
    self.eps = float(eps)
    self.kind = ("ve" if isinstance(training_sde, sde_lib.VESDE) else
                 "subvp" if isinstance(training_sde, sde_lib.subVPSDE) else "vp")
    if not self.continuous and self.kind == "subvp":
      raise UserError("Discrete training (config.training.continuous=False) is defined for "
                       "vesde and vpsde only, not subvpsde.")
    if self.continuous and self.kind == "ve":
      self.sigma_min, self.sigma_max = training_sde.sigma_min, training_sde.sigma_max
    elif self.continuous:  # VP and subVP: σ at the ends of sampling, t = eps and t = T
      self.sigma_min, self.sigma_max = float(self._sigma_of_t(eps)), float(self._sigma_of_t(1.0))
    else:
      grid, times, scales = self._discrete_grid()
      self.grid = grid  # (N,) ascending trained σ's
      self.log_grid = np.log(grid).astype(np.float32)
      self.grid_times = times.astype(np.float32)
      self.grid_scales = scales.astype(np.float32)
      self.sigma_min, self.sigma_max = float(grid[0]), float(grid[-1])

  # --- σ(t), t(σ), s(t) (float64 numpy on the host, float32 jnp in the sampler) ---
  def _log_mean(self, t):
    sde = self.sde
    return -0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0

  def _sigma_of_t(self, t):
    if self.kind == "ve":
      return self.sde.sigma_min * (self.sde.sigma_max / self.sde.sigma_min) ** t
    m = self._log_mean(np.asarray(t, np.float64))
    return np.sqrt(np.expm1(-2.0 * m)) if self.kind == "vp" else 2.0 * np.sinh(-m)

  def t_of_sigma(self, sigma):
    """The time at which the continuous network's marginal has noise level σ (jnp)."""
    sde = self.sde
    if self.kind == "ve":
      return jnp.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
    # -m(t) = ½ log(1 + σ²) (VP) or asinh(σ / 2) (subVP): solve the quadratic m(t) for t >= 0.
    minus_m = 0.5 * jnp.log1p(sigma ** 2) if self.kind == "vp" else jnp.arcsinh(sigma / 2.0)
    delta = sde.beta_1 - sde.beta_0
    return (jnp.sqrt(sde.beta_0 ** 2 + 4.0 * delta * minus_m) - sde.beta_0) / delta

  def scale_of_t(self, t):
    """s(t), the mean coefficient x = s(t)·x̃ (jnp)."""
    return jnp.ones_like(t) if self.kind == "ve" else jnp.exp(self._log_mean(t))

  def _discrete_grid(self):
    """Trained σ's (ascending), the time at which each is evaluated, and s there."""
    sde = self.sde
    n = sde.N
    index = np.arange(n)
    if self.kind == "ve":
      # Labels are round((T - t)(N - 1)) into σ's ordered from σ_max: t_k = k / (N - 1) hits
      # label N - 1 - k exactly.
      grid = np.exp(np.linspace(np.log(sde.sigma_min), np.log(sde.sigma_max), n))
      return grid, index / max(n - 1, 1), np.ones(n)
    # VP: labels are t (N - 1), and the std table is read at int(labels): choose the float32 t_k
    # nearest k / (N - 1) whose float32 product with N - 1 is not below k.
    # The same ᾱ table as the score function reads (sde_lib.VPSDE), so that σ² s / std is σ.
    alphas_cumprod = np.asarray(sde.alphas_cumprod, np.float64)
    times = (index / max(n - 1, 1)).astype(np.float32)
    for _ in range(4):
      low = times * np.float32(n - 1) < index.astype(np.float32)
      times = np.where(low, np.nextafter(times, np.float32(2)), times)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod), times, np.sqrt(alphas_cumprod)

  # --- the schedule ---
  def round_sigma(self, sigma):
    """σ rounded to the trained grid (nearest in log σ) for a discrete network (numpy)."""
    sigma = np.asarray(sigma, np.float64)
    if self.continuous:
      return sigma
    nearest = np.abs(np.log(self.grid)[None, :] - np.log(sigma)[:, None]).argmin(axis=1)
    return self.grid[nearest]

  def schedule(self, num_steps: int, kind: str = "karras", rho: float = 7.0) -> np.ndarray:
    """σ_0 > ... > σ_{n-1} and σ_n = 0: (num_steps + 1,) float64.

    `karras`: (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ (EDM eq. 5); `sde`: σ(t_i)
    on the SDE's own time grid linspace(T, eps, n) (geometric σ for VE); `logsnr`: uniform in
    log σ.
    """
    if kind not in SCHEDULES:
      raise UserError(f"config.sampling.schedule={kind!r} must be one of {SCHEDULES}.")
    if not rho > 0:
      raise UserError(f"config.sampling.karras_rho must be positive, got {rho!r}.")
    n = int(num_steps)
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    low, high = self.sigma_min, self.sigma_max
    if kind == "karras":
      sigmas = (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    elif kind == "logsnr":
      sigmas = np.exp(np.log(high) + ramp * (np.log(low) - np.log(high)))
    elif self.continuous:  # the SDE's own time grid
      sigmas = self._sigma_of_t(1.0 + ramp * (self.eps - 1.0))
    else:  # the trained steps, evenly spaced (DDIM's grid for a DDPM)
      sigmas = self.grid[np.round((1.0 - ramp) * (self.grid.size - 1)).astype(np.int64)]
    return np.concatenate([self.round_sigma(sigmas), [0.0]])

  # --- D(x̃; σ) ---
  def denoise(self, score_fn, x, sigma):
    """D(x̃; σ) for x̃ (B, H, W, C) at one noise level σ (a scalar; on the grid if discrete)."""
    batch = x.shape[0]
    if self.continuous:
      t = self.t_of_sigma(sigma)
      scale = self.scale_of_t(t)
      # σ as the network sees it at t: x̃ + σ² s·score cancels almost to D at large σ, so the
      # factor must be the σ(t) of the score's own conditioning, not σ before the round trip.
      sigma = self.sde.marginal_prob(jnp.zeros((1,)), jnp.full((1,), t))[1][0] / scale
    else:
      # The schedule's σ's are grid points already: this finds their index (N compares).
      k = jnp.argmin(jnp.abs(jnp.asarray(self.log_grid) - jnp.log(sigma)))
      sigma = jnp.asarray(self.grid, jnp.float32)[k]
      t = jnp.asarray(self.grid_times)[k]
      scale = jnp.asarray(self.grid_scales)[k]
    score = score_fn(scale * x, jnp.full((batch,), t))
    return x + (sigma ** 2 * scale) * score


class DenoiserSampler(SteppedSampler):
  """A method stepping x̃ down a σ schedule (σ_0 → ... → σ_n = 0) with the denoiser view.

  Subclasses write `step_fn(score_fn)`; the state starts at x̃_0 = σ_0 · ξ (ξ from the noise
  source, coloured when TDAS colours the initial sample) and the final samples are x̃ at σ = 0,
  which is x itself (s(0) = 1).
  """

  def __init__(self, setup, schedule: str = "karras", rho: float = 7.0):
    num_steps = setup.sde.N
    if num_steps < 1:
      raise UserError(f"config.sampling.num_steps must be >= 1, got {num_steps}.")
    self.view = DenoiserView(setup.training_sde or setup.sde, setup.continuous, setup.eps)
    self.sigmas = self.view.schedule(num_steps, schedule, rho)
    self.schedule, self.rho = schedule, rho
    super().__init__(setup, num_steps)
    self.nfe = num_steps  # one evaluation per step; Heun and EDM override it

  @staticmethod
  def schedule_fields(config):
    sampling = config.sampling
    return dict(schedule=str(sampling.schedule), rho=float(sampling.karras_rho))

  def describe(self):
    settings = dict(schedule=self.schedule, sigma_max=float(self.sigmas[0]),
                    sigma_min=float(self.sigmas[-2]), continuous=self.view.continuous)
    if self.schedule == "karras":
      settings["karras_rho"] = self.rho
    settings.update(self.method_settings())
    return settings

  def method_settings(self) -> dict:
    return {}

  def sigma_array(self):
    return jnp.asarray(self.sigmas, jnp.float32)

  def initial_state(self, noise):
    # x̃_0 = σ_0 · ξ (+ the data's mean with TDAS's init_mean: x̃'s mean at every σ).
    xi, noise = noise.draw("init")
    x = float(self.sigmas[0]) * xi
    if noise.initial_mean() is not None:
      x = x + noise.initial_mean()
    x = noise.constrain(x)
    return SigmaState(x, x, x, noise)

  def final_samples(self, state):
    return state.x


class SigmaState(NamedTuple):
  x: jnp.ndarray          # (B, H, W, C), x̃ at the current σ
  denoised_1: jnp.ndarray  # the previous step's D (multistep solvers)
  denoised_2: jnp.ndarray  # the one before it
  noise: "object"
