"""Annealed Langevin dynamics as the NCSN (ermongroup/ncsn) and NCSNv2 (ermongroup/ncsnv2) runners
sample, on the network's own noise levels, vanilla or with TDAS.

For each level c of sigma_1 > ... > sigma_L (the network's labels 0 .. L-1), with step size
alpha_c = step_lr · (sigma_c / sigma_L)², take n steps of

    x <- x + alpha_c · s(x, c) + sqrt(2 alpha_c) · z,     z ~ the noise source's draw,

starting from U[0, 1) images (both runners' `data_init: false`). NCSNv2 then denoises once,
x <- x + sigma_L² · s(x, L - 1); NCSN v1 returns the state *before* its last update (its runner
records clamp(x) before each step and keeps the last record). Both clamp to [0, 1].

The draws: the initial sample is draw 0, turned uniform by the normal CDF (U = Phi(xi)); step i
adds draw 1 + i. TDAS colours xi before the CDF and every z, as its `apply_to` says.
Acceleration: with the speed-up k = N / N' (`--speedup k`, or `sampling.num_steps` = N' for the
network's N levels, as `--mode calibrate` sets it), n' = round(n / k) steps per level with
step_lr · n / n', so that each level's accumulated step n·alpha_c is kept (the TDAS paper: "we
expand the step size proportionally"); `sampling.langevin.num_levels` takes fewer, evenly spaced
levels instead.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from models import utils as model_utils
from sampling.interface import SAMPLERS, SamplerSetup, SteppedSampler
from sampling.noise import NoiseSource
from errors import UserError

OUTPUTS = ("final", "before_last_step")


class LangevinState(NamedTuple):
  x: jax.Array         # (B, H, W, C), the chain
  x_before: jax.Array  # (B, H, W, C), the chain before the last Langevin update
  noise: NoiseSource


def level_indices(num_levels_trained: int, num_levels: int) -> np.ndarray:
  """The labels of `num_levels` levels evenly spaced over the trained 0 .. L-1, both ends kept."""
  if num_levels in (0, num_levels_trained):
    return np.arange(num_levels_trained)
  if not 1 <= num_levels <= num_levels_trained:
    raise UserError(f"config.sampling.langevin.num_levels={num_levels} must be between 1 and "
                     f"the {num_levels_trained} levels the network was trained on (0 = all).")
  return np.unique(np.round(np.linspace(0, num_levels_trained - 1, num_levels)).astype(int))


@SAMPLERS.register("annealed_langevin")
class AnnealedLangevinSampler(SteppedSampler):
  """The ermongroup runners' annealed Langevin dynamics for a batch (B, H, W, C) in [0, 1].

  Args:
    setup: the score-function builder, shape and sharding (`SamplerSetup`); a discrete VE
      network whose label c is sigmas[c].
    sigmas: (L,) the network's noise levels, largest first (`models.utils.get_sigmas`).
    step_lr: the runner's step_lr (alpha_c = step_lr (sigma_c / sigma_L)²).
    n_steps_each: Langevin steps per level.
    levels: the labels sampled, in order (default all L).
    denoise: finish with x + sigma_L² s(x, L - 1) (NCSNv2's `sampling.denoise`).
    output: 'final' (the chain after the loop, NCSNv2) or 'before_last_step' (NCSN v1's record).
    clamp: clamp the result to [0, 1] (both runners).
  """

  def __init__(self, setup: SamplerSetup, sigmas, step_lr: float, n_steps_each: int,
               levels=None, denoise: bool = True, output: str = "final", clamp: bool = True):
    if output not in OUTPUTS:
      raise UserError(f"config.sampling.langevin.output={output!r} must be one of {OUTPUTS}.")
    if not step_lr > 0:
      raise UserError(f"config.sampling.langevin.step_lr={step_lr!r} must be positive.")
    if int(n_steps_each) < 1:
      raise UserError(f"config.sampling.langevin.n_steps_each={n_steps_each!r} must be >= 1.")
    self.sigmas = np.asarray(sigmas, np.float64)
    self.levels = np.arange(len(self.sigmas)) if levels is None else np.asarray(levels, int)
    self.step_lr, self.n_steps_each = float(step_lr), int(n_steps_each)
    self.denoise, self.output, self.clamp = bool(denoise), output, bool(clamp)
    self.langevin_steps = len(self.levels) * self.n_steps_each
    super().__init__(setup, self.langevin_steps + int(self.denoise))
    self.nfe = self.num_steps

  @classmethod
  def from_config(cls, config, setup):
    langevin = config.sampling.langevin
    sigmas = model_utils.get_sigmas(config)
    n_steps_each, step_lr = int(langevin.n_steps_each), float(langevin.step_lr)
    # The speed-up k = N / N' (--speedup k, or sampling.num_steps = N' against the N levels):
    # fewer steps per level, each level's total step n·alpha_c kept.
    fewer = max(1, int(round(n_steps_each / setup.speedup)))
    if fewer != n_steps_each:
      step_lr, n_steps_each = step_lr * n_steps_each / fewer, fewer
    levels = level_indices(len(sigmas), int(langevin.num_levels))
    return cls(setup, sigmas, step_lr, n_steps_each, levels=levels,
               denoise=bool(langevin.denoise), output=str(langevin.output),
               clamp=bool(langevin.clamp))

  def describe(self):
    return dict(step_lr=self.step_lr, n_steps_each=self.n_steps_each,
                num_levels=int(len(self.levels)), denoise=self.denoise, output=self.output,
                sigma_max=float(self.sigmas[self.levels[0]]),
                sigma_min=float(self.sigmas[self.levels[-1]]))

  def _times(self, labels):
    # The score function's discrete VE label is round((1 - t)(L - 1)): t for label c.
    count = len(self.sigmas)
    return 1.0 - labels.astype(jnp.float32) / max(count - 1, 1)

  def initial_state(self, noise):
    # x_0 ~ U[0, 1): the normal CDF of draw 0 (coloured by TDAS with apply_to init/both).
    xi, noise = noise.draw("init")
    x = noise.constrain(ndtr(xi))
    return LangevinState(x=x, x_before=x, noise=noise)

  def step_fn(self, score_fn):
    batch = self.shape[0]
    labels = jnp.asarray(self.levels, jnp.int32)
    sigmas = jnp.asarray(self.sigmas, jnp.float32)
    sigma_last = self.sigmas[-1]
    steps = jnp.asarray(self.step_lr * (self.sigmas[self.levels] / sigma_last) ** 2, jnp.float32)

    def langevin(i, state):
      level = i // self.n_steps_each
      t = jnp.full((batch,), self._times(labels[level]))
      z, noise = state.noise.draw()
      grad = score_fn(state.x, t)
      # x <- x + alpha_c s(x, c) + sqrt(2 alpha_c) z
      x = state.x + steps[level] * grad + jnp.sqrt(2.0 * steps[level]) * z
      return LangevinState(x=noise.constrain(x), x_before=state.x, noise=noise)

    def denoise(i, state):
      del i
      t = jnp.full((batch,), self._times(jnp.asarray(len(self.sigmas) - 1)))
      # NCSNv2's final step: x <- x + sigma_L² s(x, L - 1), no noise.
      x = state.x + sigmas[-1] ** 2 * score_fn(state.x, t)
      return state._replace(x=state.noise.constrain(x))

    def step(i, state):
      if not self.denoise:
        return langevin(i, state)
      return jax.lax.cond(i < self.langevin_steps, langevin, denoise, i, state)

    return step

  def final_samples(self, state):
    x = state.x_before if self.output == "before_last_step" else state.x
    return jnp.clip(x, 0.0, 1.0) if self.clamp else x
