"""Predictors: one reverse-time step from t to t - 1/N' (docs/numerics.md §5).

Each predictor draws its noise only from the `sampling.noise.NoiseSource` it is given (standard
normal for the vanilla sampler, TDAS-coloured otherwise) and returns the source it advanced.
Shapes: x (B, H, W, C), t (B,).
"""
import jax.numpy as jnp

import sde_lib
from sampling.registry import Registry
from errors import UserError

PREDICTORS = Registry("predictor", "config.sampling.predictor")


class Predictor:
  """Base class. `evaluations`: score evaluations per `update` (for the NFE count)."""

  evaluations = 1

  def __init__(self, sde, score_fn, probability_flow: bool = False):
    self.sde = sde
    self.score_fn = score_fn
    self.reverse = sde.reverse(score_fn, probability_flow)

  def update(self, x, t, noise):
    """Returns (x_next, x_next_mean, noise) given the state x at time t and a noise source."""
    raise NotImplementedError


@PREDICTORS.register("euler_maruyama")
class EulerMaruyama(Predictor):
  """x_mean = x + f_rev dt with dt = -1/N; x = x_mean + g_rev sqrt(1/N) z."""

  def update(self, x, t, noise):
    dt = -1.0 / self.reverse.N
    drift, diffusion = self.reverse.sde(x, t)
    x_mean = x + drift * dt
    z, noise = noise.draw()
    return x_mean + sde_lib.per_sample(diffusion, x) * jnp.sqrt(-dt) * z, x_mean, noise


@PREDICTORS.register("reverse_diffusion")
class ReverseDiffusion(Predictor):
  """The discretised reverse SDE: x_mean = x - f_rev; x = x_mean + G_rev z."""

  def update(self, x, t, noise):
    f, G = self.reverse.discretize(x, t)
    x_mean = x - noise.precondition(f)  # PDS preconditions the whole discretised drift
    z, noise = noise.draw()
    return x_mean + sde_lib.per_sample(G, x) * z, x_mean, noise


@PREDICTORS.register("ancestral_sampling")
class AncestralSampling(Predictor):
  """Ancestral sampling of SMLD (VE) and DDPM (VP) on their discrete noise schedules."""

  def __init__(self, sde, score_fn, probability_flow: bool = False):
    super().__init__(sde, score_fn, probability_flow)
    if type(sde) not in (sde_lib.VESDE, sde_lib.VPSDE):
      raise UserError("config.sampling.predictor='ancestral_sampling' is defined for vesde and "
                       f"vpsde only, not {type(sde).__name__}.")
    if probability_flow:
      raise UserError("Ancestral sampling has no probability-flow form "
                       "(config.sampling.probability_flow must be False).")

  def update(self, x, t, noise):
    sde = self.sde
    score = self.score_fn(x, t)
    if isinstance(sde, sde_lib.VESDE):
      sigma, previous = sde.adjacent_sigmas(t)
      x_mean = x + sde_lib.per_sample(sigma ** 2 - previous ** 2, x) * score
      std = jnp.sqrt(previous ** 2 * (sigma ** 2 - previous ** 2) / sigma ** 2)
    else:
      beta = sde.discrete_betas[sde.step_index(t)]
      x_mean = ((x + sde_lib.per_sample(beta, x) * score)
                / sde_lib.per_sample(jnp.sqrt(1.0 - beta), x))
      std = jnp.sqrt(beta)
    z, noise = noise.draw()
    return x_mean + sde_lib.per_sample(std, x) * z, x_mean, noise


@PREDICTORS.register("none")
class NoPredictor(Predictor):
  """Leaves x unchanged (corrector-only sampling, e.g. annealed Langevin dynamics)."""

  evaluations = 0

  def update(self, x, t, noise):
    return x, x, noise
