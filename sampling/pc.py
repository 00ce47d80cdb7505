"""The predictor–corrector sampler, vanilla or TDAS, as one jitted program (docs/numerics.md §5, §6).

Time grid: N' points linspace(T, eps, N'); at each point the corrector's step(s), then the
predictor's. The state's noise source gives the initial sample draw 0 and step i the draws
1 + i (n_steps_each + 1) + j (corrector step j, then the predictor), coloured by TDAS as its
`apply_to` says.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

import sde_lib
from sampling.correctors import CORRECTORS
from sampling.interface import SAMPLERS, SamplerSetup, SteppedSampler
from sampling.noise import NoiseSource
from sampling.predictors import PREDICTORS
from errors import UserError


class PCState(NamedTuple):
  x: jax.Array       # (B, H, W, C), the noisy state
  x_mean: jax.Array  # (B, H, W, C), the last predictor's mean
  noise: NoiseSource


@SAMPLERS.register("pc")
class PCSampler(SteppedSampler):
  """Predictor–corrector sampling of a batch of shape (B, H, W, C).

  Args:
    setup: the SDE (whose N is the number of steps N'), score-function builder, shape, eps and
      sharding (`sampling.interface.SamplerSetup`).
    predictor, corrector: registered names (`sampling.predictors`, `sampling.correctors`).
    snr, n_steps_each, probability_flow: as score_sde's `config.sampling`.
    denoise: return the last predictor mean (`sampling.noise_removal`) instead of the noisy state.
  """

  def __init__(self, setup: SamplerSetup, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, n_steps_each: int = 1,
               probability_flow: bool = False, denoise: bool = True):
    self.predictor_cls = PREDICTORS.get(predictor)
    self.corrector_cls = CORRECTORS.get(corrector)
    self.snr = snr
    self.n_steps_each = int(n_steps_each)
    self.probability_flow = probability_flow
    self.denoise = denoise
    # Check the predictor/SDE combination now, not at trace time.
    self.predictor_cls(setup.sde, lambda x, t: x, probability_flow)
    super().__init__(setup, setup.sde.N)
    self.nfe = self.num_steps * (self.predictor_cls.evaluations + self.corrector_cls(
        setup.sde, None, snr, n_steps_each).evaluations)

  @classmethod
  def from_config(cls, config, setup):
    sampling = config.sampling
    return cls(setup, predictor=sampling.predictor, corrector=sampling.corrector,
               snr=sampling.snr, n_steps_each=sampling.n_steps_each,
               probability_flow=sampling.probability_flow, denoise=sampling.noise_removal)

  def describe(self):
    return dict(predictor=self.predictor_cls.name, corrector=self.corrector_cls.name)

  def initial_state(self, noise):
    # x_N = prior scale · xi (+ the data's mean with TDAS's init_mean, VE: p_T's mean).
    xi, noise = noise.draw("init")
    x = self.sde.prior_from_noise(xi)
    if noise.initial_mean() is not None:
      if not isinstance(self.sde, sde_lib.VESDE):
        raise UserError("config.sampling.tdas.init_mean: a VP or subVP prior has mean ~0, so PC "
                         "sampling starts there; use init_mean with a VE model or a σ-schedule "
                         "method (euler, heun, dpmpp_*, ...).")
      x = noise.constrain(x + noise.initial_mean())
    return PCState(x, x, noise)

  def step_fn(self, score_fn):
    predictor = self.predictor_cls(self.sde, score_fn, self.probability_flow)
    corrector = self.corrector_cls(self.sde, score_fn, self.snr, self.n_steps_each)
    timesteps = jnp.linspace(self.sde.T, self.setup.eps, self.num_steps)
    batch = self.shape[0]

    def step(i, state):
      t = jnp.full((batch,), timesteps[i])
      # Corrector step(s) at t, then the predictor step from t (each then `after_update`).
      x, _, noise = corrector.update(state.x, t, state.noise)
      x, noise = self.after_update(x, t, state, noise)
      x, x_mean, noise = predictor.update(x, t, noise)
      x, noise = self.after_update(x, t, state, noise)
      return state._replace(x=noise.constrain(x), x_mean=noise.constrain(x_mean), noise=noise)

    return step

  def after_update(self, x, t, state, noise):
    """What follows each corrector and predictor update: nothing here; conditional sampling sets
    the known pixels (`sampling.conditional`). Returns (x, noise)."""
    del t, state
    return x, noise

  def final_samples(self, state):
    return state.x_mean if self.denoise else state.x
