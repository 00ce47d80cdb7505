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

from sampling.interface import SampleResult, coloring_of
from sampling.noise import NoiseSource
from sampling.pc import PCSampler

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
      raise ValueError(f"The conditioning space {space!r} must be one of {SPACES}.")
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

  def _replace_known(self, x, t, state, noise):
    """x with its known components set to the data diffused to t: (x, data mean at t, noise)."""
    mean, std = self.sde.marginal_prob(state.known, t)
    xi, noise = noise.draw("forward")
    noisy = mean + std.reshape((-1,) + (1,) * (x.ndim - 1)) * xi
    free = self.decouple(x) * (1 - state.mask)
    return self.couple(free + noisy * state.mask), mean, noise

  def step_fn(self, score_fn):
    predictor = self.predictor_cls(self.sde, score_fn, self.probability_flow)
    corrector = self.corrector_cls(self.sde, score_fn, self.snr, self.n_steps_each)
    timesteps = jnp.linspace(self.sde.T, self.setup.eps, self.num_steps)
    batch = self.shape[0]

    def step(i, state):
      t = jnp.full((batch,), timesteps[i])
      # Corrector at t, then the predictor from t; the known part replaced after each.
      x, _, noise = corrector.update(state.x, t, state.noise)
      x, _, noise = self._replace_known(x, t, state, noise)
      x, x_mean, noise = predictor.update(x, t, noise)
      x, _, noise = self._replace_known(x, t, state, noise)
      return state._replace(x=noise.constrain(x), x_mean=noise.constrain(x_mean), noise=noise)

    return step

  def final_samples(self, state):
    x = state.x_mean if self.denoise else state.x
    return self.couple(self.decouple(x) * (1 - state.mask) + state.known * state.mask)

  def sample(self, rng, variables, data=None, mask=None, tdas=None):
    state = self.init(rng, tdas, data, mask)
    state = self.advance(state, variables)
    return SampleResult(self._finish(state), self.nfe)


def build(config, shape, space: str, batch_sharding=None) -> ConditionalPCSampler:
  """The conditional PC sampler of `config.sampling` (predictor, corrector, snr, ...) for
  batches of `shape` in `space` ('pixels' or 'colour')."""
  from sampling import factory  # pylint: disable=g-import-not-at-top  (factory imports us)
  sampling = config.sampling
  if str(sampling.method).lower() != "pc":
    raise ValueError(f"Inpainting and colourisation use the PC sampler: set "
                     f"config.sampling.method='pc' (it is {sampling.method!r}).")
  setup = factory.make_setup(config, shape, batch_sharding=batch_sharding)
  return ConditionalPCSampler(setup, space=space, predictor=sampling.predictor,
                              corrector=sampling.corrector, snr=sampling.snr,
                              n_steps_each=sampling.n_steps_each,
                              probability_flow=sampling.probability_flow,
                              denoise=sampling.noise_removal)
