"""Predictors, correctors, the PC and ODE samplers, TDAS noise injection, devices (docs/numerics.md §5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import sde_lib
from sampling import correctors, devices, ode, pc, predictors
from sampling.interface import SamplerSetup
from tdas import filters as tdas_filters
from tdas import noise as tdas_noise
from tdas.settings import TDAS

TARGET_STD = 0.3
SHAPE = (16, 8, 8, 3)


def gaussian_score_builder(sde):
  """Exact score of N(0, v I) diffused by `sde`; `variables = {'var': v}`."""
  def builder(variables):
    def score_fn(x, t):
      mean_coeff = sde.marginal_prob(jnp.ones((1,)), t)[0].reshape(-1, 1, 1, 1)
      std = sde.marginal_prob(jnp.zeros_like(x), t)[1].reshape(-1, 1, 1, 1)
      return -x / (mean_coeff ** 2 * variables["var"] + std ** 2)
    return score_fn
  return builder


VARIABLES = {"var": jnp.float32(TARGET_STD ** 2)}
VE = sde_lib.VESDE(0.01, 50.0, N=100)
VP = sde_lib.VPSDE(0.1, 20.0, N=100)


def _setup(sde, shape=SHAPE, eps=None, batch_sharding=None):
  return SamplerSetup(sde=sde, score_fn_builder=gaussian_score_builder(sde), shape=shape,
                      eps=sde.sampling_eps if eps is None else eps,
                      batch_sharding=batch_sharding)


@struct.dataclass
class FixedNoise:
  """A stand-in noise source that returns the same array `z` at every draw (formula tests)."""
  z: jax.Array

  def draw(self, kind="step"):
    del kind
    return self.z, self

  def skip(self, count):
    del count
    return self

  def precondition(self, v):
    return v


@pytest.fixture(scope="module")
def ve_sampler():
  return pc.PCSampler(_setup(VE), snr=0.16)


def _tdas(lambda2=1.0, space_value=1.0, transform="dct", apply_to="both"):
  return TDAS.from_arrays(
      space=jnp.full(SHAPE[1:], space_value, jnp.float32),
      freq=jnp.asarray(tdas_filters.frequency_filter(SHAPE[1:], 0.3, 0.5, 1.0, lambda2,
                                                     transform)),
      transform=transform, apply_to=apply_to)


def test_identity_filters_reproduce_the_vanilla_sampler(ve_sampler):
  rng = jax.random.PRNGKey(0)
  vanilla = np.asarray(ve_sampler.sample(rng, VARIABLES).samples)
  for transform in ("dct", "dft"):
    tdas = np.asarray(ve_sampler.sample(rng, VARIABLES, _tdas(transform=transform)).samples)
    np.testing.assert_allclose(tdas, vanilla, atol=2e-5 * np.abs(vanilla).max())


def test_tdas_filters_change_the_samples_and_apply_to_selects_the_draws(ve_sampler):
  rng = jax.random.PRNGKey(0)
  vanilla = ve_sampler.sample(rng, VARIABLES).samples
  both = ve_sampler.sample(rng, VARIABLES, _tdas(lambda2=0.5)).samples
  assert float(jnp.max(jnp.abs(both - vanilla))) > 1e-2
  x_init = ve_sampler.init(rng, _tdas(lambda2=0.5, apply_to="init")).x
  x_vanilla = ve_sampler.init(rng, None).x
  x_noise = ve_sampler.init(rng, _tdas(lambda2=0.5, apply_to="noise")).x
  assert float(jnp.max(jnp.abs(x_init - x_vanilla))) > 1.0
  np.testing.assert_array_equal(np.asarray(x_noise), np.asarray(x_vanilla))
  # The initial sample is sigma_max times the coloured draw.
  colored = _tdas(lambda2=0.5)
  eps = jax.random.normal(jax.random.fold_in(rng, 0), SHAPE)
  expected = 50.0 * tdas_noise.color(eps, colored.space, colored.freq, "dct")
  np.testing.assert_allclose(np.asarray(x_init), np.asarray(expected), rtol=1e-5, atol=1e-4)
  # Switched off, the same object gives the vanilla samples.
  np.testing.assert_array_equal(
      np.asarray(ve_sampler.sample(rng, VARIABLES, colored.without_filters()).samples),
      np.asarray(vanilla))


def test_same_samples_on_one_and_four_devices():
  assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
  mesh = devices.batch_mesh()
  one = pc.PCSampler(_setup(VE), snr=0.16)
  four = pc.PCSampler(_setup(VE, batch_sharding=devices.batch_sharding(mesh)), snr=0.16)
  rng = jax.random.PRNGKey(7)
  tdas = _tdas(lambda2=0.8, space_value=0.9)
  a = one.sample(rng, VARIABLES, tdas).samples
  b = four.sample(rng, jax.device_put(VARIABLES, devices.replicated(mesh)),
                  tdas.device_put(devices.replicated(mesh))).samples
  assert len(b.sharding.device_set) == 4
  np.testing.assert_allclose(np.asarray(a), devices.local_rows(b), atol=1e-5)
  with pytest.raises(ValueError, match="config.eval.batch_size=6"):
    devices.check_batch_size(6, mesh)


def test_chunked_run_equals_one_call(ve_sampler):
  rng = jax.random.PRNGKey(1)
  tdas = _tdas(lambda2=0.7)
  state = ve_sampler.init(rng, tdas)
  chunk = ve_sampler.chunk_size(updates=7)
  for start in range(0, ve_sampler.num_steps, chunk):
    state = ve_sampler.advance(state, VARIABLES, start, num=chunk)
  chunked = ve_sampler.finish(state)
  assert chunked.nfe == ve_sampler.nfe == 200
  np.testing.assert_array_equal(np.asarray(chunked.samples),
                                np.asarray(ve_sampler.sample(rng, VARIABLES, tdas).samples))
  # The noise counter went through every draw: the initial one and two per step.
  assert int(state.noise.counter) == 1 + 2 * ve_sampler.num_steps


@pytest.mark.parametrize("sde, predictor, corrector", [
    (VE, "reverse_diffusion", "langevin"), (VP, "euler_maruyama", "none"),
    (VP, "ancestral_sampling", "langevin"), (sde_lib.subVPSDE(0.1, 20.0, N=100), "reverse_diffusion",
                                             "langevin")])
def test_pc_reaches_the_target_variance(sde, predictor, corrector):
  sampler = pc.PCSampler(_setup(sde, (64, 8, 8, 3)), predictor=predictor, corrector=corrector,
                         snr=0.16)
  x = np.asarray(sampler.sample(jax.random.PRNGKey(2), VARIABLES).samples)
  assert abs(x.std() - TARGET_STD) < 0.05 * TARGET_STD
  assert sampler.nfe == 100 * (1 + (corrector != "none"))


def test_predictor_updates_follow_their_formulas():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 1))
  z = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  t = jnp.array([0.6, 0.3])
  score_fn = lambda x, t: -0.5 * x
  i = (t * 99).astype(int)
  # Reverse diffusion on VE: x_mean = x + (sigma_i² - sigma_{i-1}²) score; x = x_mean + G z.
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 100))
  g2 = sigmas[i] ** 2 - sigmas[i - 1] ** 2
  new, mean, _ = predictors.ReverseDiffusion(VE, score_fn).update(x, t, FixedNoise(z))
  np.testing.assert_allclose(np.asarray(mean), x + g2[:, None, None, None] * (-0.5 * x),
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(new - mean), np.sqrt(g2)[:, None, None, None] * z,
                             rtol=1e-4)
  # Ancestral on VP: x_mean = (x + beta score) / sqrt(1 - beta); x = x_mean + sqrt(beta) z.
  betas = np.linspace(0.1 / 100, 20.0 / 100, 100)[i][:, None, None, None]
  new, mean, _ = predictors.AncestralSampling(VP, score_fn).update(x, t, FixedNoise(z))
  np.testing.assert_allclose(np.asarray(mean), (x - 0.5 * betas * x) / np.sqrt(1 - betas),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new - mean), np.sqrt(betas) * z, rtol=1e-4, atol=1e-6)


def test_langevin_step_uses_batch_averaged_norms_of_the_added_noise():
  x = jax.random.normal(jax.random.PRNGKey(6), (3, 4, 4, 1))
  z = 2.0 * jax.random.normal(jax.random.PRNGKey(7), x.shape)  # e.g. a coloured draw
  t = jnp.full((3,), 0.5)
  score_fn = lambda x, t: -x
  new, mean, _ = correctors.LangevinCorrector(VP, score_fn, snr=0.2, n_steps=1).update(
      x, t, FixedNoise(z))
  norm = lambda v: np.mean(np.linalg.norm(np.asarray(v).reshape(3, -1), axis=1))
  alpha = 1 - np.linspace(0.1 / 100, 20.0 / 100, 100)[49]
  step = 2 * alpha * (0.2 * norm(z) / norm(x)) ** 2
  np.testing.assert_allclose(np.asarray(mean), x - step * x, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new - mean), np.sqrt(2 * step) * z, rtol=1e-4, atol=1e-6)


def test_ald_step_is_set_by_the_marginal_std():
  x = jax.random.normal(jax.random.PRNGKey(6), (3, 4, 4, 1))
  z = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  t = jnp.array([0.2, 0.5, 0.9])
  ald = correctors.AnnealedLangevinDynamics(VE, lambda x, t: -x, snr=0.1, n_steps=3)
  assert ald.evaluations == 3
  sigma = 0.01 * 5000.0 ** np.asarray(t)
  step = (2 * (0.1 * sigma) ** 2)[:, None, None, None]
  expected = np.asarray(x)
  for _ in range(3):
    expected = expected - step * expected + np.sqrt(2 * step) * np.asarray(z)
  new, _, _ = ald.update(x, t, FixedNoise(z))
  np.testing.assert_allclose(np.asarray(new), expected, rtol=1e-4, atol=1e-5)


def test_ode_sampler_reaches_the_target_and_counts_evaluations():
  sampler = ode.ODESampler(_setup(VE, (32, 8, 8, 3)), rtol=1e-4, atol=1e-4)
  x, nfe = sampler.sample(jax.random.PRNGKey(8), VARIABLES)
  assert abs(float(jnp.std(x)) - TARGET_STD) < 0.05 * TARGET_STD
  assert 10 < int(nfe) < 2000 and (int(nfe) - 2) % 6 == 0


@pytest.mark.parametrize("make, pattern", [
    (lambda: pc.PCSampler(_setup(VE), predictor="heun"), "config.sampling.predictor"),
    (lambda: pc.PCSampler(_setup(VE), corrector="hmc"), "config.sampling.corrector"),
    (lambda: pc.PCSampler(_setup(sde_lib.subVPSDE(0.1, 20, 10)),
                          predictor="ancestral_sampling"), "vesde and vpsde only"),
    (lambda: TDAS.from_arrays(apply_to="all"), "config.sampling.tdas.apply_to"),
    (lambda: ode.ODESampler(_setup(VE), solver="rk4"), "config.sampling.ode.solver"),
])
def test_bad_sampler_settings_name_the_field(make, pattern):
  with pytest.raises(ValueError, match=pattern):
    make()


def test_pc_with_the_exact_analytic_score_reproduces_the_target_spectrum():
  """N' = 2000, LSUN-like Langevin snr: every radial band's std within 2 % of the target's."""
  from sampling import factory  # pylint: disable=g-import-not-at-top
  from configs.analytic import get_analytic_config  # pylint: disable=g-import-not-at-top
  from models import analytic  # pylint: disable=g-import-not-at-top
  from models import utils as model_utils  # pylint: disable=g-import-not-at-top
  config = get_analytic_config(8, 50, snr=0.075)
  config.sampling.num_steps = 2000
  model = model_utils.create_model(config)
  variables = analytic.target_variables(config)
  sampler = factory.build(config, (512, 8, 8, 3), model)
  x = np.asarray(sampler.sample(jax.random.PRNGKey(0), variables).samples)
  ratios = analytic.band_std_ratio(x, variables, 4)
  np.testing.assert_allclose(ratios, 1.0, atol=0.02)


@pytest.mark.parametrize("solver", ["bosh3", "heun"])
def test_ode_nfe_is_the_number_of_score_calls(solver):
  """The reported NFE equals the calls the score model itself counts (a host callback in the
  model, apart from the sampler's own count), for the solvers whose step formula misled:
  bosh3 (first-same-as-last) and heun."""
  calls = []
  builder = gaussian_score_builder(VE)

  def counting_builder(variables):
    score_fn = builder(variables)

    def counted(x, t):
      jax.debug.callback(lambda: calls.append(1))
      return score_fn(x, t)
    return counted

  setup = SamplerSetup(sde=VE, score_fn_builder=counting_builder, shape=(2, 2, 2, 1),
                       eps=VE.sampling_eps)
  _, nfe = ode.ODESampler(setup, solver=solver, rtol=1e-2, atol=1e-2).sample(
      jax.random.PRNGKey(1), VARIABLES)
  jax.effects_barrier()
  assert int(nfe) == len(calls) > 4
