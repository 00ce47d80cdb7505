"""The sampler interface: one factory, one noise source, a new method as one decorated class."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analytic import get_analytic_config
from models import analytic
from sampling import factory, ode, pc
from sampling.interface import SAMPLERS, SteppedSampler
from sampling.noise import NoiseSource
from tdas import filters as tdas_filters
from tdas.settings import TDAS

SHAPE = (8, 8, 8, 3)


class TwoDrawsState(NamedTuple):
  x: jax.Array
  first: jax.Array   # the first draw of the last step
  second: jax.Array  # the second draw of the last step
  noise: NoiseSource


@SAMPLERS.register("test_two_draws")
class TwoDrawsSampler(SteppedSampler):
  """A throw-away method that draws two noises per step (like a churn and an SDE stage)."""

  def __init__(self, setup, num_steps):
    super().__init__(setup, num_steps)
    self.nfe = num_steps

  @classmethod
  def from_config(cls, config, setup):
    return cls(setup, setup.sde.N)

  def initial_state(self, noise):
    xi, noise = noise.draw("init")
    return TwoDrawsState(xi, xi, xi, noise)

  def step_fn(self, score_fn):
    def step(i, state):
      first, noise = state.noise.draw()
      second, noise = noise.draw()
      x = state.x + 1e-3 * score_fn(state.x, jnp.full((self.shape[0],), 0.5))
      return TwoDrawsState(x, first, second, noise)
    return step

  def final_samples(self, state):
    return state.x


@pytest.fixture(scope="module")
def config():
  config = get_analytic_config(8, 50)
  config.sampling.num_steps = 3
  return config


def test_a_registered_method_is_built_by_the_factory_and_gets_fresh_draws(config):
  config.sampling.method = "test_two_draws"
  sampler = factory.build(config, SHAPE)
  assert isinstance(sampler, TwoDrawsSampler) and sampler.num_steps == 3
  rng = jax.random.PRNGKey(3)
  state = sampler.advance(sampler.init(rng), analytic.target_variables(config))
  first, second = np.asarray(state.first), np.asarray(state.second)
  assert not np.allclose(first, second)
  assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.1
  # Draw numbers: 0 for the initial sample, then two per step; the last step drew 5 and 6.
  assert int(state.noise.counter) == 7
  np.testing.assert_array_equal(first, jax.random.normal(jax.random.fold_in(rng, 5), SHAPE))
  np.testing.assert_array_equal(second, jax.random.normal(jax.random.fold_in(rng, 6), SHAPE))
  # factory.run drives it in chunks like any method with steps.
  x, nfe = factory.run(sampler, rng, analytic.target_variables(config), what="test")
  assert x.shape == SHAPE and nfe == 3


def test_tdas_colours_every_draw_of_a_new_method_in_one_place(config):
  config.sampling.method = "test_two_draws"
  sampler = factory.build(config, SHAPE)
  freq = tdas_filters.frequency_filter(SHAPE[1:], 0.2, 0.3, 0.5, 0.25)
  tdas = TDAS.from_arrays(freq=freq, apply_to="noise")
  rng = jax.random.PRNGKey(4)
  colored = sampler.advance(sampler.init(rng, tdas), analytic.target_variables(config))
  vanilla = sampler.advance(sampler.init(rng), analytic.target_variables(config))
  # apply_to='noise': the initial draw stays white, both step draws are filtered.
  np.testing.assert_array_equal(np.asarray(sampler.init(rng, tdas).x),
                                np.asarray(sampler.init(rng).x))
  for name in ("first", "second"):
    white, filtered = np.asarray(getattr(vanilla, name)), np.asarray(getattr(colored, name))
    np.testing.assert_allclose(filtered, np.asarray(tdas.coloring()(white)), atol=1e-5)
    assert filtered.std() < 0.7 * white.std()


def test_noise_source_numbers_its_draws():
  rng = jax.random.PRNGKey(0)
  source = NoiseSource.create(rng, (2, 4, 4, 1))
  a, after_a = source.draw()
  b, _ = after_a.draw()
  again, _ = source.draw()
  np.testing.assert_array_equal(np.asarray(a), np.asarray(again))  # the source is a value
  assert not np.allclose(np.asarray(a), np.asarray(b))
  skipped, _ = source.skip(1).draw()
  np.testing.assert_array_equal(np.asarray(skipped), np.asarray(b))


def test_factory_builds_pc_and_ode_and_names_an_unknown_method(config):
  config.sampling.method = "pc"
  assert isinstance(factory.build(config, SHAPE), pc.PCSampler)
  config.sampling.method = "ode"
  assert isinstance(factory.build(config, SHAPE), ode.ODESampler)
  config.sampling.method = "dpm_solver_9000"
  with pytest.raises(ValueError, match="config.sampling.method='dpm_solver_9000'.*test_two_draws"):
    factory.build(config, SHAPE)
  config.sampling.method = "pc"
