"""Controllable generation with the PC sampler: inpainting and colourisation (score_sde's
`controllable_generation.py`, Song et al. 2021 App. I), vanilla or with TDAS.

Known components are replaced after every corrector and predictor update by the data diffused
to the current time, y_t = mean(y, t) + std(t) ξ (ξ white: the forward process's noise, which
TDAS never colours); the unknown ones follow the sampler. In a `space`:
- 'pixels' (inpainting): the mask selects pixels;
- 'colour' (colourisation): the images are first decoupled by score_sde's orthogonal colour
  matrix, whose first axis is the grey level (R + G + B) / sqrt(3); the mask keeps that axis.
The result is coupled back with the known components set to the data exactly.
Differences from score_sde, both deliberate: the unknown part of the final mean is the
predictor's mean (score_sde takes the noisy state there), and colourisation starts from
couple(decouple(grey)·mask + decouple(prior)·(1 − mask)) (score_sde masks the prior in RGB first).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sampling.correctors import LangevinCorrector
from sampling.denoiser import DenoiserSampler
from sampling.interface import SampleResult, SteppedSampler, coloring_of
from sampling.noise import NoiseSource
from sampling.pc import PCSampler
from errors import UserError

# score_sde's orthogonal colour matrix (controllable_generation.get_pc_colorizer): column 0 is
# the grey axis (1, 1, 1) / sqrt(3).
COLOUR_MATRIX = np.array([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                          [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                          [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], np.float32)
SPACES = ("pixels", "colour")


class ConditionalState(NamedTuple):
  x: jax.Array       # (B, H, W, C), the chain
  x_mean: jax.Array  # (B, H, W, C), the last predictor's mean
  noise: NoiseSource
  known: jax.Array   # (B, H, W, C), the data in the conditioning space
  mask: jax.Array    # (B, H, W, C), 1 where known, in the conditioning space


class ConditionalPCSampler(PCSampler):
  """PC sampling of (B, H, W, C) given known components; `space` is 'pixels' or 'colour'.

  `sample(rng, variables, data, mask, tdas)` -> SampleResult: data (B, H, W, C) in model space
  (colourisation: any image whose grey level is the known one), mask (B, H, W, C) or
  broadcastable, 1 = known, in the conditioning space.
  """

  def __init__(self, setup, space: str = "pixels", **pc_settings):
    if space not in SPACES:
      raise UserError(f"The conditioning space {space!r} must be one of {SPACES}.")
    super().__init__(setup, **pc_settings)
    self.space = space
    self._conditional_init = jax.jit(self._conditional_init_impl)

  def decouple(self, x):
    if self.space == "pixels":
      return x
    return jnp.einsum("bhwi,ij->bhwj", x, COLOUR_MATRIX)

  def couple(self, x):
    if self.space == "pixels":
      return x
    return jnp.einsum("bhwi,ij->bhwj", x, COLOUR_MATRIX.T)  # the inverse of an orthogonal M

  def _conditional_init_impl(self, rng, coloring, data, mask):
    noise = NoiseSource.create(rng, self.shape, coloring, self.setup.batch_sharding)
    xi, noise = noise.draw("init")
    prior = self.sde.prior_from_noise(xi)
    known = self.decouple(data)
    mask = jnp.broadcast_to(mask, known.shape).astype(known.dtype)
    x = self.couple(self.decouple(prior) * (1 - mask) + known * mask)
    return ConditionalState(x, x, noise, known, mask)

  def init(self, rng, tdas=None, data=None, mask=None):
    if data is None or mask is None:
      raise ValueError("A conditional sampler needs the known data and its mask.")
    return self._conditional_init(rng, coloring_of(tdas), jnp.asarray(data, jnp.float32),
                                  jnp.asarray(mask, jnp.float32))

  def after_update(self, x, t, state, noise):
    """x with its known components set to the data diffused to t (fresh white noise)."""
    mean, std = self.sde.marginal_prob(state.known, t)
    xi, noise = noise.draw("forward")
    noisy = mean + std.reshape((-1,) + (1,) * (x.ndim - 1)) * xi
    free = self.decouple(x) * (1 - state.mask)
    return self.couple(free + noisy * state.mask), noise

  def final_samples(self, state):
    x = state.x_mean if self.denoise else state.x
    return self.couple(self.decouple(x) * (1 - state.mask) + state.known * state.mask)

  def sample(self, rng, variables, data=None, mask=None, tdas=None):
    state = self.init(rng, tdas, data, mask)
    state = self.advance(state, variables)
    return SampleResult(self._finish(state), self.nfe)


class SigmaConditionalState(NamedTuple):
  inner: object      # the σ-schedule method's own state (`denoiser.SigmaState`)
  known: jax.Array   # (B, H, W, C), the data in the conditioning space
  mask: jax.Array    # (B, H, W, C), 1 where known


class ConditionalSigmaSampler(SteppedSampler):
  """A σ-schedule method (Euler ancestral, DPM-Solver++ SDE, EDM, ...) given known components.

  It steps x̃ = x / s(t), whose law at σ is the data plus σ·noise for VE, VP and subVP alike.
  After step i the known components are set to y + σ_{i+1} ξ (ξ white), and at σ = 0 to y
  itself. Replacement alone leaves the filled part out of step with the known one (measured on
  the analytic Gaussian: the conditional mean missed by ~25 standard errors, at 100 and at 1000
  steps, as PC without its corrector does). So, as PC's corrector does, `corrector_steps`
  Langevin steps at each σ_{i+1} > 0 (score (D(x̃; σ) − x̃) / σ², step 2 (snr ‖z‖ / ‖score‖)²,
  `sampling.snr`) move x̃ towards p_σ(x̃ | known), each followed by the replacement.
  `sample(rng, variables, data, mask, tdas)` as `ConditionalPCSampler`.
  """

  def __init__(self, method: DenoiserSampler, space: str = "pixels", corrector_steps: int = 1,
               snr: float = 0.16):
    if space not in SPACES:
      raise UserError(f"The conditioning space {space!r} must be one of {SPACES}.")
    self.method, self.space = method, space
    self.corrector_steps, self.snr = int(corrector_steps), float(snr)
    super().__init__(method.setup, method.num_steps)
    self.nfe = method.nfe + self.corrector_steps * (method.num_steps - 1)
    self._conditional_init = jax.jit(self._conditional_init_impl)

  decouple = ConditionalPCSampler.decouple
  couple = ConditionalPCSampler.couple

  def describe(self):
    return self.method.describe()

  def _replace_known(self, x, sigma, known, mask, noise):
    xi, noise = noise.draw("forward")
    free = self.decouple(x) * (1 - mask)
    return self.couple(free + (known + sigma * xi) * mask), noise

  def _conditional_init_impl(self, rng, coloring, data, mask):
    noise = NoiseSource.create(rng, self.shape, coloring, self.setup.batch_sharding)
    inner = self.method.initial_state(noise)
    known = self.decouple(data)
    mask = jnp.broadcast_to(mask, known.shape).astype(known.dtype)
    x, noise = self._replace_known(inner.x, float(self.method.sigmas[0]), known, mask,
                                   inner.noise)
    return SigmaConditionalState(inner._replace(x=x, noise=noise), known, mask)

  def init(self, rng, tdas=None, data=None, mask=None):
    if data is None or mask is None:
      raise ValueError("A conditional sampler needs the known data and its mask.")
    return self._conditional_init(rng, coloring_of(tdas), jnp.asarray(data, jnp.float32),
                                  jnp.asarray(mask, jnp.float32))

  def step_fn(self, score_fn):
    inner_step = self.method.step_fn(score_fn)
    sigmas = self.method.sigma_array()
    view = self.method.view

    def correct(x, sigma, state, noise):
      # Langevin steps on x̃ at σ with score (D − x̃) / σ² (the corrector of PC), each followed
      # by the replacement.
      def score(y, t):
        del t
        return (view.denoise(score_fn, y, sigma) - y) / sigma ** 2

      langevin = LangevinCorrector(None, score, self.snr, 1)
      t = jnp.zeros((x.shape[0],))
      for _ in range(self.corrector_steps):
        x, _, noise = langevin.update(x, t, noise)
        x, noise = self._replace_known(x, sigma, state.known, state.mask, noise)
      return x, noise

    def step(i, state):
      inner = inner_step(i, state.inner)
      # The method's step to σ_{i+1}, then the known part set to the data at σ_{i+1}.
      sigma = sigmas[i + 1]
      x, noise = self._replace_known(inner.x, sigma, state.known, state.mask, inner.noise)
      if self.corrector_steps:
        x, noise = jax.lax.cond(sigma > 0, correct, lambda x, s, st, n: (x, n), x, sigma,
                                state, noise)
      return state._replace(inner=inner._replace(x=noise.constrain(x), noise=noise))

    return step

  def final_samples(self, state):
    x = self.method.final_samples(state.inner)
    return self.couple(self.decouple(x) * (1 - state.mask) + state.known * state.mask)

  def sample(self, rng, variables, data=None, mask=None, tdas=None):
    state = self.advance(self.init(rng, tdas, data, mask), variables)
    return SampleResult(self._finish(state), self.nfe)


def build(config, shape, space: str, batch_sharding=None):
  """The conditional sampler of `config.sampling` for batches of `shape` in `space` ('pixels'
  or 'colour'): PC (predictor, corrector, snr, ...) or a σ-schedule method."""
  from sampling import factory  # pylint: disable=g-import-not-at-top  (factory imports us)
  sampling = config.sampling
  if str(sampling.method).lower() != "pc":
    method = factory.build(config, shape, batch_sharding=batch_sharding)
    if not isinstance(method, DenoiserSampler):
      raise UserError(f"Inpainting and colourisation use the PC sampler or a σ-schedule "
                       f"method (euler, heun, edm, euler_ancestral, ddim, dpmpp_*); "
                       f"config.sampling.method={sampling.method!r} is neither.")
    corrector_steps = 0 if str(sampling.corrector) == "none" else int(sampling.n_steps_each)
    return ConditionalSigmaSampler(method, space, corrector_steps=corrector_steps,
                                   snr=float(sampling.snr))
  setup = factory.make_setup(config, shape, batch_sharding=batch_sharding)
  return ConditionalPCSampler(setup, space=space, predictor=sampling.predictor,
                              corrector=sampling.corrector, snr=sampling.snr,
                              n_steps_each=sampling.n_steps_each,
                              probability_flow=sampling.probability_flow,
                              denoise=sampling.noise_removal)
