"""The predictor–corrector sampler, vanilla or TDAS, as one jitted program (SEMANTICS §5, §6).

Time grid: N' points linspace(T, eps, N'); at each point the corrector's step(s), then the
predictor's. Every Gaussian draw of the sampler — the initial sample and each predictor and
corrector noise — comes from one noise source: draw number c is
`normal(fold_in(rng, c), (B, H, W, C))`, optionally coloured by TDAS. Arrays are global (jit over a
batch-sharded mesh), so the same seed gives the same samples on any number of devices.
"""
import dataclasses
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from sampling.correctors import CORRECTORS
from sampling.predictors import PREDICTORS
from tdas import noise as tdas_noise

APPLY_TO = ("init", "noise", "both")


@dataclasses.dataclass(frozen=True)
class TDASSettings:
  """Which draws TDAS colours, and through which transform. Static: part of the compiled program.

  The filters themselves are arrays passed to the sampler at call time (`filters` below).
  """
  transform: str = "dct"
  apply_to: str = "both"

  def __post_init__(self):
    if self.apply_to not in APPLY_TO:
      raise ValueError(f"config.sampling.tdas.apply_to={self.apply_to!r} must be one of "
                       f"{APPLY_TO}.")


class PCSampler:
  """Predictor–corrector sampling of a batch of shape (B, H, W, C).

  Args:
    sde: the (possibly accelerated) SDE; its N is the number of steps N'.
    score_fn_builder: variables -> score_fn(x, t); called inside the jitted program so the
      network's weights are arguments, not constants.
    shape: (B, H, W, C), the global batch.
    predictor, corrector: registered names (`sampling.predictors`, `sampling.correctors`).
    snr, n_steps_each, probability_flow: as score_sde's `config.sampling`.
    eps: the last time point.
    denoise: return the last predictor mean (`sampling.noise_removal`) instead of the noisy state.
    tdas: which draws to colour when filters are given (None: vanilla only).
    batch_sharding: optional sharding of x over devices (see `sampling.devices`).

  Call `sample(rng, variables, filters)` for the whole run, or `init` / `advance` / `finish` to
  run it in chunks (for a progress bar). `filters` is None (vanilla) or a dict with `space` and
  `freq`, each an (H, W, C) array or None (that filter off).
  """

  def __init__(self, sde, score_fn_builder: Callable[[Any], Callable], shape: Tuple[int, ...],
               predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_steps_each: int = 1, probability_flow: bool = False,
               eps: float = 1e-3, denoise: bool = True, tdas: Optional[TDASSettings] = None,
               batch_sharding=None):
    self.sde = sde
    self.score_fn_builder = score_fn_builder
    self.shape = tuple(shape)
    self.predictor_cls = PREDICTORS.get(predictor)
    self.corrector_cls = CORRECTORS.get(corrector)
    self.snr = snr
    self.n_steps_each = int(n_steps_each)
    self.probability_flow = probability_flow
    self.eps = eps
    self.denoise = denoise
    self.tdas = tdas or TDASSettings()
    self.batch_sharding = batch_sharding
    self.num_steps = sde.N
    self.draws_per_step = self.n_steps_each + 1
    # Check the predictor/SDE combination now, not at trace time.
    self.predictor_cls(sde, lambda x, t: x, probability_flow)
    self.nfe = self.num_steps * (self.predictor_cls.evaluations + self.corrector_cls(
        sde, None, snr, n_steps_each).evaluations)
    self.init = jax.jit(self._init)
    self.advance = jax.jit(self._advance, static_argnames=("num",))
    self.finish = jax.jit(self._finish)
    self.sample = jax.jit(self._sample)

  def _constrain(self, x):
    if self.batch_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding)

  def _draw(self, rng, counter, filters, colored: bool):
    eps = jax.random.normal(jax.random.fold_in(rng, counter), self.shape)
    if filters is None or not colored:
      return self._constrain(eps)
    return self._constrain(tdas_noise.color(eps, filters.get("space"), filters.get("freq"),
                                            self.tdas.transform))

  def _init(self, rng, filters=None):
    """The initial state (x, x_mean): x_N = prior scale · xi, xi coloured if TDAS says so."""
    colored = self.tdas.apply_to in ("init", "both")
    x = self.sde.prior_from_noise(self._draw(rng, 0, filters, colored))
    return x, x

  def _advance(self, state, rng, variables, filters=None, start=0, num=None):
    """Runs steps start .. start + num - 1 (clipped at N'); num=None runs to the end."""
    score_fn = self.score_fn_builder(variables)
    predictor = self.predictor_cls(self.sde, score_fn, self.probability_flow)
    corrector = self.corrector_cls(self.sde, score_fn, self.snr, self.n_steps_each)
    colored = self.tdas.apply_to in ("noise", "both")
    timesteps = jnp.linspace(self.sde.T, self.eps, self.num_steps)
    batch = self.shape[0]

    def step(i, state):
      x, _ = state
      t = jnp.full((batch,), timesteps[i])
      first_draw = 1 + i * self.draws_per_step
      x, x_mean = corrector.update(
          x, t, lambda j: self._draw(rng, first_draw + j, filters, colored))
      x, x_mean = predictor.update(
          x, t, lambda: self._draw(rng, first_draw + self.n_steps_each, filters, colored))
      return self._constrain(x), self._constrain(x_mean)

    stop = self.num_steps if num is None else jnp.minimum(start + num, self.num_steps)
    return jax.lax.fori_loop(start, stop, step, state)

  def _finish(self, state):
    x, x_mean = state
    return x_mean if self.denoise else x

  def _sample(self, rng, variables, filters=None):
    state = self._init(rng, filters)
    return self._finish(self._advance(state, rng, variables, filters))

  def chunk_size(self, updates: int = 50) -> int:
    """Steps per `advance` call so that a progress bar moves about `updates` times."""
    return max(1, math.ceil(self.num_steps / updates))
