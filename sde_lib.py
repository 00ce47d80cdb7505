"""The forward SDEs of score-based models and their reverse-time versions (docs/numerics.md §2).

Shapes: `x` is a batch (B, H, W, C) (any trailing shape works), `t` is (B,) in [0, T] with T = 1.
Every SDE can be built with any number of discretisation steps N: the accelerated samplers rebuild
the same SDE with N' = N / k steps, so each discrete step is k times larger.
"""
import abc

import jax
import jax.numpy as jnp
import numpy as np
from errors import UserError


def per_sample(values, x):
  """Broadcasts per-sample values (B,) against a batch `x` (B, ...) -> (B, 1, ..., 1)."""
  values = jnp.asarray(values)
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


class SDE(abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T], discretised with N steps."""

  # End time of sampling (the sampler stops at t = eps, not 0); docs/numerics.md §5.
  sampling_eps: float = 1e-3

  def __init__(self, N: int):
    if int(N) != N or N < 1:
      raise UserError(f"The number of discretisation steps N must be a positive integer, got {N!r}.")
    self.N = int(N)

  @property
  def T(self) -> float:
    return 1.0

  def step_index(self, t):
    """Index of the discrete step at time t (B,): int(t (N - 1) / T), int32 (docs/numerics.md §2)."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  @abc.abstractmethod
  def sde(self, x, t):
    """Returns (drift f(x, t) shaped like x, diffusion g(t) shaped (B,))."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Parameters of p_t(x(t) | x(0) = x): (mean shaped like x, std shaped (B,))."""

  @abc.abstractmethod
  def prior_sampling(self, rng, shape):
    """A draw from the prior p_T, `shape` = (B, H, W, C)."""

  def prior_from_noise(self, z):
    """Maps a unit-variance draw z (standard or TDAS-coloured) to the prior's scale."""
    return z

  @abc.abstractmethod
  def prior_logp(self, z):
    """Log-density of the prior at z (B, ...), summed over all but the batch axis -> (B,)."""

  def discretize(self, x, t):
    """One discrete forward step x_{i+1} = x_i + f_i + G_i z: returns (f_i like x, G_i (B,)).

    The default is Euler–Maruyama with step 1/N; VE and VP override it with the discretisations
    of SMLD and DDPM.
    """
    dt = 1.0 / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or, with `probability_flow`, the probability-flow ODE).

    Args:
      score_fn: (x, t) -> estimate of grad_x log p_t(x), shaped like x.
      probability_flow: if True, the deterministic ODE with the same marginals.
    """
    return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
  """Reverse time: drift f - G² score (probability flow: f - ½ G² score, no noise)."""

  def __init__(self, forward: SDE, score_fn, probability_flow: bool):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N
    self.T = forward.T
    self._score_weight = 0.5 if probability_flow else 1.0

  def _reverse(self, x, t, f, G):
    score = self.score_fn(x, t)
    rev_f = f - per_sample(G ** 2, x) * score * self._score_weight
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G

  def sde(self, x, t):
    """Continuous reverse drift and diffusion, (like x, (B,))."""
    drift, diffusion = self.forward.sde(x, t)
    return self._reverse(x, t, drift, diffusion)

  def discretize(self, x, t):
    """One discrete reverse step: (f_rev like x, G_rev (B,)); x_{i-1} = x_i - f_rev + G_rev z."""
    f, G = self.forward.discretize(x, t)
    return self._reverse(x, t, f, G)


class VESDE(SDE):
  """Variance exploding SDE (SMLD): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

  sampling_eps = 1e-5

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise UserError("VESDE needs 0 < model.sigma_min < model.sigma_max, got "
                       f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}.")
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    # Geometric grid, index 0 = sigma_min (the discrete SMLD noise levels): the log-grid in
    # float64 as score_sde builds it, then exp in float32. A float32 linspace would be ~5e-7 off,
    # which sqrt(sigma_i^2 - sigma_{i-1}^2) magnifies to ~1e-4 at N = 2000.
    self.discrete_sigmas = jnp.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), self.N))

  def _sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    diffusion = self._sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self._sigma(t)

  def prior_sampling(self, rng, shape):
    return self.prior_from_noise(jax.random.normal(rng, shape))

  def prior_from_noise(self, z):
    return z * self.sigma_max

  def prior_logp(self, z):
    n = np.prod(z.shape[1:])
    sum_sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=1)
    return -n / 2.0 * np.log(2 * np.pi * self.sigma_max ** 2) - sum_sq / (2.0 * self.sigma_max ** 2)

  def discretize(self, x, t):
    """SMLD step: f = 0, G = sqrt(sigma_i² - sigma_{i-1}²) with sigma_{-1} = 0."""
    sigma, previous = self.adjacent_sigmas(t)
    return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - previous ** 2)

  def adjacent_sigmas(self, t):
    """(sigma_i, sigma_{i-1}) of the discrete step at time t, each (B,); sigma_{-1} = 0."""
    i = self.step_index(t)
    sigma = self.discrete_sigmas[i]
    previous = jnp.where(i == 0, jnp.zeros_like(sigma), self.discrete_sigmas[jnp.maximum(i - 1, 0)])
    return sigma, previous


class VPSDE(SDE):
  """Variance preserving SDE (DDPM): beta(t) = beta_min + t (beta_max - beta_min)."""

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
    super().__init__(N)
    if not 0 <= beta_min < beta_max:
      raise UserError("A VP-type SDE needs 0 <= model.beta_min < model.beta_max, got "
                       f"beta_min={beta_min!r}, beta_max={beta_max!r}.")
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    self.discrete_betas = jnp.linspace(beta_min / self.N, beta_max / self.N, self.N)
    self.alphas = 1.0 - self.discrete_betas
    self.alphas_cumprod = jnp.cumprod(self.alphas, axis=0)
    self.sqrt_alphas_cumprod = jnp.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = jnp.sqrt(1.0 - self.alphas_cumprod)

  def _beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def _log_mean_coeff(self, t):
    """m(t) = -¼ t² (beta_1 - beta_0) - ½ t beta_0; the mean is exp(m(t)) x."""
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def sde(self, x, t):
    beta_t = self._beta(t)
    return -0.5 * per_sample(beta_t, x) * x, jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = per_sample(jnp.exp(log_mean_coeff), x) * x
    return mean, jnp.sqrt(1.0 - jnp.exp(2.0 * log_mean_coeff))

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    n = np.prod(z.shape[1:])
    sum_sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=1)
    return -n / 2.0 * np.log(2 * np.pi) - sum_sq / 2.0

  def discretize(self, x, t):
    """DDPM step: f = sqrt(alpha_i) x - x, G = sqrt(beta_i)."""
    i = self.step_index(t)
    f = per_sample(jnp.sqrt(self.alphas[i]), x) * x - x
    return f, jnp.sqrt(self.discrete_betas[i])


class subVPSDE(VPSDE):  # pylint: disable=invalid-name  (score_sde's name)
  """sub-VP SDE: VP's drift with a diffusion whose marginal variance stays below VP's.

  Its `std` is 1 - exp(2 m(t)), deliberately not square-rooted: released checkpoints were trained
  against exactly this (docs/numerics.md §2). It uses the default Euler–Maruyama discretisation.
  """

  def sde(self, x, t):
    beta_t = self._beta(t)
    discount = 1.0 - jnp.exp(-2.0 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return -0.5 * per_sample(beta_t, x) * x, jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = per_sample(jnp.exp(log_mean_coeff), x) * x
    return mean, 1.0 - jnp.exp(2.0 * log_mean_coeff)

  discretize = SDE.discretize


_SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}


def mean_scale_from_std(sde, std):
  """s(t) of the marginal x_t = s(t) x0 + std(t) z, from its std (jnp): 1 (VE), sqrt(1 - std²)
  (VP), sqrt(1 - std) (subVP, whose "std" is 1 - s², docs/numerics.md §2)."""
  std = jnp.asarray(std)
  if isinstance(sde, VESDE):
    return jnp.ones_like(std)
  if isinstance(sde, subVPSDE):
    return jnp.sqrt(jnp.maximum(1.0 - std, 0.0))
  return jnp.sqrt(jnp.maximum(1.0 - std ** 2, 0.0))


def get_sde(config, num_steps=None) -> SDE:
  """The SDE that `config.training.sde` names, with `num_steps` (default model.num_scales) steps."""
  name = str(config.training.sde).lower()
  if name not in _SDES:
    raise UserError(f"config.training.sde={config.training.sde!r} is not one of {sorted(_SDES)}.")
  N = config.model.num_scales if num_steps is None else num_steps
  if name == "vesde":
    return VESDE(sigma_min=float(config.model.sigma_min), sigma_max=float(config.model.sigma_max),
                 N=N)
  return _SDES[name](beta_min=float(config.model.beta_min), beta_max=float(config.model.beta_max),
                     N=N)
