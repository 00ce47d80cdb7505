"""The interface every sampling method implements, and the registry `config.sampling.method`
names.

A method is one class decorated with `@SAMPLERS.register(name)` in any module of `sampling/`
(`sampling.factory` imports them all). It is built by `from_config(config, setup)` and called as

    result = sampler.sample(rng, variables, tdas)   # SampleResult(samples, nfe)

where `tdas` is the run's `tdas.settings.TDAS` (or None: vanilla). A method with steps derives from
`SteppedSampler` and writes three pure functions — its initial state, one step, the final samples
— and gets `init` / `advance` / `finish` (chunked runs for a progress bar, bit-identical to one
`sample` call) for free. Every Gaussian it needs comes from the state's `noise`
(`sampling.noise.NoiseSource`), one `draw()` per draw.
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from sampling.noise import NoiseSource
from sampling.registry import Registry

SAMPLERS = Registry("sampler", "config.sampling.method")


class SampleResult(NamedTuple):
  """`samples` (B, H, W, C) in model space and `nfe`, the score evaluations actually spent."""
  samples: jax.Array
  nfe: Any


@dataclasses.dataclass(frozen=True)
class SamplerSetup:
  """What the factory resolves from the config for every method.

  Attributes:
    sde: the (possibly accelerated) SDE; its N is the number of steps N'.
    score_fn_builder: variables -> score_fn(x, t), called inside the jitted program so the
      network's weights are arguments, not constants.
    shape: (B, H, W, C), the global batch.
    eps: the last time point.
    speedup: k = model.num_scales / N'.
    batch_sharding: the sharding of x over devices, or None (see `sampling.devices`).
    training_sde: the SDE the network was trained with (N = model.num_scales), or None for `sde`.
    continuous: whether the network takes continuous labels (else a discrete σ grid).
    guidance: the run's `sampling.guidance.Guidance`, or None; with it the sampler's variables
      are `GuidedVariables(network, classifier, labels)`.
  """
  sde: Any
  score_fn_builder: Callable[[Any], Callable]
  shape: Tuple[int, ...]
  eps: float
  speedup: float = 1.0
  batch_sharding: Any = None
  training_sde: Any = None
  continuous: bool = True
  guidance: Any = None


def coloring_of(tdas):
  """The jitted part of a `tdas.settings.TDAS` (None when TDAS is off or not given)."""
  return None if tdas is None else tdas.coloring()


class Sampler:
  """Base class of every method.

  Attributes set by subclasses: `shape` (B, H, W, C); `num_steps`, the sampler's steps (None for
  adaptive methods); `nfe`, the score evaluations per sample call when known before running
  (None otherwise: read `SampleResult.nfe`).
  """

  name = "sampler"
  num_steps: Optional[int] = None
  nfe: Optional[int] = None

  @classmethod
  def from_config(cls, config, setup: SamplerSetup) -> "Sampler":
    raise NotImplementedError

  def sample(self, rng, variables, tdas=None) -> SampleResult:
    raise NotImplementedError

  def describe(self) -> dict:
    """The method's own settings, JSON-ready (for sampling.json)."""
    return {}


class SteppedSampler(Sampler):
  """A method that takes `num_steps` steps of a `lax` loop over a state pytree.

  Subclasses set `self.setup`, `self.num_steps` and `self.nfe` and implement:
    initial_state(noise) -> state, a pytree holding the NoiseSource under `noise`;
    step_fn(score_fn) -> step(i, state) -> state;
    final_samples(state) -> (B, H, W, C).
  """

  def __init__(self, setup: SamplerSetup, num_steps: int):
    self.setup = setup
    self.sde = setup.sde
    self.shape = tuple(setup.shape)
    self.num_steps = int(num_steps)
    self._init = jax.jit(self._init_impl)
    self._advance = jax.jit(self._advance_impl, static_argnames=("num",))
    self._finish = jax.jit(self._finish_impl)
    self._sample = jax.jit(self._sample_impl)

  # --- what a method writes ---
  def initial_state(self, noise: NoiseSource):
    raise NotImplementedError

  def step_fn(self, score_fn) -> Callable:
    raise NotImplementedError

  def final_samples(self, state):
    raise NotImplementedError

  # --- the interface ---
  def init(self, rng, tdas=None):
    """The state before step 0."""
    return self._init(rng, coloring_of(tdas))

  def advance(self, state, variables, start: int = 0, num: Optional[int] = None):
    """Runs steps start .. start + num - 1 (clipped at num_steps); num=None runs to the end."""
    return self._advance(state, variables, start, num=num)

  def finish(self, state) -> SampleResult:
    return SampleResult(self._finish(state), self.nfe)

  def sample(self, rng, variables, tdas=None) -> SampleResult:
    """The whole run as one compiled program."""
    return SampleResult(self._sample(rng, variables, coloring_of(tdas)), self.nfe)

  def chunk_size(self, updates: int = 50) -> int:
    """Steps per `advance` call so that a progress bar moves about `updates` times."""
    return max(1, math.ceil(self.num_steps / updates))

  # --- jitted bodies ---
  def _init_impl(self, rng, coloring):
    noise = NoiseSource.create(rng, self.shape, coloring, self.setup.batch_sharding)
    return self.initial_state(noise)

  def _advance_impl(self, state, variables, start=0, num=None):
    step = self.step_fn(self.setup.score_fn_builder(variables))
    stop = self.num_steps if num is None else jnp.minimum(start + num, self.num_steps)
    return jax.lax.fori_loop(start, stop, step, state)

  def _finish_impl(self, state):
    return self.final_samples(state)

  def _sample_impl(self, rng, variables, coloring):
    return self._finish_impl(self._advance_impl(self._init_impl(rng, coloring), variables))
