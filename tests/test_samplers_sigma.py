"""The σ-schedule samplers (EDM's Euler/Heun/stochastic, Euler ancestral, DDIM, DPM-Solver++) on
the denoiser view, against float64 numpy transcriptions of their published algorithms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from configs.analytic import get_analytic_config
from models import utils as model_utils
from sampling import ancestral, devices, dpm_solver, edm, factory
from sampling.denoiser import DenoiserView
from sampling.interface import SamplerSetup
from tdas import filters as tdas_filters
from tdas.settings import TDAS

VAR = 0.3 ** 2
VE = sde_lib.VESDE(0.01, 50.0, N=100)
VP = sde_lib.VPSDE(0.1, 20.0, N=100)
SUBVP = sde_lib.subVPSDE(0.1, 20.0, N=100)
SHAPE = (4, 4, 4, 1)
VARIABLES = {"var": jnp.float32(VAR)}


def gaussian_score_builder(sde, calls=None):
  """Exact score of N(0, v I) diffused by `sde`; counts its evaluations into `calls`."""
  def builder(variables):
    def score_fn(x, t):
      if calls is not None:
        jax.debug.callback(lambda: calls.append(1))
      mean_coeff = sde.marginal_prob(jnp.ones((1,)), t)[0].reshape(-1, 1, 1, 1)
      std = sde.marginal_prob(jnp.zeros_like(x), t)[1].reshape(-1, 1, 1, 1)
      return -x / (mean_coeff ** 2 * variables["var"] + std ** 2)
    return score_fn
  return builder


def setup_for(sde, shape=SHAPE, calls=None, batch_sharding=None, num_steps=5):
  sampler_sde = type(sde)(*( (sde.sigma_min, sde.sigma_max) if isinstance(sde, sde_lib.VESDE)
                             else (sde.beta_0, sde.beta_1)), N=num_steps)
  return SamplerSetup(sde=sampler_sde, score_fn_builder=gaussian_score_builder(sde, calls),
                      shape=shape, eps=sde.sampling_eps, batch_sharding=batch_sharding,
                      training_sde=sde, continuous=True)


# ---------------------------------------------------------------------------------------------
# float64 transcriptions (EDM Algorithm 2, k-diffusion's samplers), with D(x; σ) = x v / (v + σ²).

def exact_denoiser(x, sigma):
  return x * VAR / (VAR + sigma ** 2)


def reference(method, sigmas, x, noises, eta=1.0, s_noise=1.0, solver_type="midpoint",
              churn=0.0, s_tmin=0.0, s_tmax=math.inf):
  n = len(sigmas) - 1
  D = exact_denoiser
  old_denoised = older_denoised = None
  for i in range(n):
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    if method in ("euler", "heun", "edm"):
      gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
      t_hat = sigma * (1 + gamma)
      x_hat = x + math.sqrt(t_hat ** 2 - sigma ** 2) * s_noise * noises[i] if gamma else x
      d = (x_hat - D(x_hat, t_hat)) / t_hat
      x = x_hat + (sigma_next - t_hat) * d
      if method != "euler" and i < n - 1:
        d_prime = (x - D(x, sigma_next)) / sigma_next
        x = x_hat + (sigma_next - t_hat) * (0.5 * d + 0.5 * d_prime)
      continue
    denoised = D(x, sigma)
    if method == "euler_ancestral":
      sigma_up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2)
                                                 / sigma ** 2))
      sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)
      x = x + (sigma_down - sigma) * (x - denoised) / sigma
      if sigma_next > 0:
        x = x + noises[i] * s_noise * sigma_up
    elif sigma_next == 0:
      x = denoised
    else:
      h = math.log(sigma) - math.log(sigma_next)
      if method == "dpmpp_2m":
        if old_denoised is None:
          x = sigma_next / sigma * x - math.expm1(-h) * denoised
        else:
          r = (math.log(sigmas[i - 1]) - math.log(sigma)) / h
          dd = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
          x = sigma_next / sigma * x - math.expm1(-h) * dd
      elif method == "dpmpp_2m_sde":
        eta_h = eta * h
        x = sigma_next / sigma * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
          r = (math.log(sigmas[i - 1]) - math.log(sigma)) / h
          if solver_type == "heun":
            x = x + (-math.expm1(-h - eta_h) / (-h - eta_h) + 1) / r * (denoised - old_denoised)
          else:
            x = x - 0.5 * math.expm1(-h - eta_h) / r * (denoised - old_denoised)
        x = x + noises[i] * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
      elif method == "dpmpp_3m_sde":
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        h_1 = (math.log(sigmas[i - 1]) - math.log(sigma)) if i >= 1 else None
        h_2 = (math.log(sigmas[i - 2]) - math.log(sigmas[i - 1])) if i >= 2 else None
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
          r0, r1 = h_1 / h, h_2 / h
          d1_0 = (denoised - old_denoised) / r0
          d1_1 = (old_denoised - older_denoised) / r1
          d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
          d2 = (d1_0 - d1_1) / (r0 + r1)
          x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif h_1 is not None:
          x = x + phi_2 * (denoised - old_denoised) / (h_1 / h)
        x = x + noises[i] * sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
    older_denoised, old_denoised = old_denoised, denoised
  return x


CASES = [
    ("euler", edm.EulerSampler, {}),
    ("heun", edm.HeunSampler, {}),
    ("edm", edm.EDMStochasticSampler, dict(S_churn=2.0, S_tmin=0.05, S_tmax=20.0, S_noise=1.003)),
    ("euler_ancestral", ancestral.EulerAncestralSampler, dict(eta=0.8, s_noise=1.01)),
    ("dpmpp_2m", dpm_solver.DPMSolverPP2M, {}),
    ("dpmpp_2m_sde", dpm_solver.DPMSolverPP2MSDE, dict(eta=0.9)),
    ("dpmpp_2m_sde_heun", dpm_solver.DPMSolverPP2MSDE, dict(solver_type="heun")),
    ("dpmpp_3m_sde", dpm_solver.DPMSolverPP3MSDE, dict(eta=0.7)),
]


@pytest.mark.parametrize("name, cls, kwargs", CASES, ids=[c[0] for c in CASES])
def test_each_method_matches_its_published_algorithm(name, cls, kwargs):
  sampler = cls(setup_for(VE, num_steps=6), **kwargs)
  rng = jax.random.PRNGKey(11)
  out = np.asarray(sampler.sample(rng, VARIABLES).samples, np.float64)
  draws = [np.asarray(jax.random.normal(jax.random.fold_in(rng, c), SHAPE), np.float64)
           for c in range(sampler.num_steps + 1)]
  method = "dpmpp_2m_sde" if name.startswith("dpmpp_2m_sde") else name
  ref_kwargs = dict(kwargs)
  if method == "edm":
    ref_kwargs = dict(churn=kwargs["S_churn"], s_tmin=kwargs["S_tmin"], s_tmax=kwargs["S_tmax"],
                      s_noise=kwargs["S_noise"])
  expected = reference(method, sampler.sigmas, sampler.sigmas[0] * draws[0], draws[1:],
                       **ref_kwargs)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  assert not np.allclose(out, exact_denoiser(sampler.sigmas[0] * draws[0], 1.0))


@pytest.mark.parametrize("name", ["euler", "heun", "edm", "euler_ancestral", "dpmpp_2m",
                                  "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_each_method_reaches_the_target_and_counts_real_evaluations(name):
  calls = []
  cls = dict((c[0], c[1]) for c in CASES)[name]
  kwargs = dict(S_churn=10.0) if name == "edm" else {}
  # First order converges slowly: Euler is 6 % low at 40 steps, 1.3 % at 200; ancestral 12 %, 3 %.
  steps = 200 if name in ("euler", "euler_ancestral") else 40
  sampler = cls(setup_for(VE, (64, 8, 8, 3), calls=calls, num_steps=steps), **kwargs)
  result = sampler.sample(jax.random.PRNGKey(2), VARIABLES)
  x = np.asarray(result.samples)
  jax.effects_barrier()
  assert abs(x.std() - 0.3) < 0.05 * 0.3, x.std()
  expected_nfe = 2 * steps - 1 if name in ("heun", "edm") else steps
  assert result.nfe == sampler.nfe == len(calls) == expected_nfe


@pytest.mark.parametrize("sde", [VP, SUBVP], ids=["vp", "subvp"])
def test_vp_and_subvp_denoisers_equal_the_ve_one_on_the_same_target(sde):
  """x̃ = x₀ + σ ε for every SDE: the exact denoiser of N(0, v) is v / (v + σ²) x̃ in all three."""
  x = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
  views = {s: DenoiserView(s, True, s.sampling_eps) for s in (VE, sde)}
  for sigma in (0.05, 0.4, 3.0, 40.0):
    got = {s: np.asarray(v.denoise(gaussian_score_builder(s)(VARIABLES), x, jnp.float32(sigma)))
           for s, v in views.items()}
    # D = x̃ + σ² s·score cancels to ~v/σ² of x̃: float32 leaves ~1e-7 of |x̃| either way.
    floor = 1e-6 * float(jnp.abs(x).max())
    np.testing.assert_allclose(got[sde], got[VE], rtol=2e-5, atol=floor)
    exact = np.asarray(x) * VAR / (VAR + sigma ** 2)
    np.testing.assert_allclose(got[VE], exact, rtol=1e-5, atol=floor)
  # And its samplers reach the target from its own σ range.
  sampler = dpm_solver.DPMSolverPP2M(setup_for(sde, (64, 8, 8, 3), num_steps=30))
  assert sampler.sigmas[0] > 50  # VP's σ(1) ≈ 157
  x = np.asarray(sampler.sample(jax.random.PRNGKey(5), VARIABLES).samples)
  assert abs(x.std() - 0.3) < 0.05 * 0.3


class _DiscreteGaussian:
  """A stand-in discrete network for N(0, v): refuses (NaN) any label that is not a grid index."""

  def __init__(self, sde, kind):
    self.sde, self.kind = sde, kind

  def apply(self, variables, x, labels, train=False, rngs=None):
    del train, rngs
    index = jnp.round(labels).astype(jnp.int32)
    exact = labels == jnp.round(labels)
    if self.kind == "ve":  # output = score; labels index σ's from σ_max down
      sigmas = jnp.asarray(np.exp(np.linspace(np.log(self.sde.sigma_max),
                                              np.log(self.sde.sigma_min), self.sde.N)),
                           jnp.float32)
      out = -x / (VAR + sigmas[index].reshape(-1, 1, 1, 1) ** 2)
    else:  # output = ε prediction; labels = timestep index
      a = self.sde.alphas_cumprod[index].reshape(-1, 1, 1, 1)
      out = jnp.sqrt(1 - a) * x / (a * VAR + 1 - a)
    return jnp.where(exact.reshape(-1, 1, 1, 1), out, jnp.nan)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_discrete_models_step_on_their_trained_grid(kind):
  train_sde = sde_lib.VESDE(0.01, 50.0, N=1000) if kind == "ve" else sde_lib.VPSDE(0.1, 20.0,
                                                                                     N=1000)
  model = _DiscreteGaussian(train_sde, kind)

  def builder(variables):
    return model_utils.get_score_fn(train_sde, model, variables, False, num_scales=1000)

  for method in (edm.HeunSampler, dpm_solver.DPMSolverPP2M):
    setup = SamplerSetup(sde=type(train_sde)(*((0.01, 50.0) if kind == "ve" else (0.1, 20.0)),
                                              N=25),
                         score_fn_builder=builder, shape=(64, 8, 8, 3), eps=train_sde.sampling_eps,
                         training_sde=train_sde, continuous=False)
    sampler = method(setup)
    grid = sampler.view.grid
    assert all(np.isclose(grid, s).any() for s in sampler.sigmas[:-1])  # every σ is trained
    x = np.asarray(sampler.sample(jax.random.PRNGKey(3), {}).samples)
    assert np.all(np.isfinite(x)) and abs(x.std() - 0.3) < 0.06 * 0.3, x.std()


def test_identity_tdas_is_vanilla_and_four_devices_equal_one():
  mesh = devices.batch_mesh()
  shape = (8, 8, 8, 3)
  one = dpm_solver.DPMSolverPP2MSDE(setup_for(VE, shape, num_steps=8))
  four = dpm_solver.DPMSolverPP2MSDE(setup_for(VE, shape, num_steps=8,
                                               batch_sharding=devices.batch_sharding(mesh)))
  rng = jax.random.PRNGKey(9)
  vanilla = np.asarray(one.sample(rng, VARIABLES).samples)
  identity = TDAS.from_arrays(space=np.ones(shape[1:], np.float32),
                              freq=np.ones(shape[1:], np.float32))
  np.testing.assert_allclose(np.asarray(one.sample(rng, VARIABLES, identity).samples), vanilla,
                             atol=1e-5)
  colored = TDAS.from_arrays(freq=tdas_filters.frequency_filter(shape[1:], 0.2, 0.4, 0.8, 0.5))
  a = np.asarray(one.sample(rng, VARIABLES, colored).samples)
  assert np.abs(a - vanilla).max() > 1e-2
  b = four.sample(rng, jax.device_put(VARIABLES, devices.replicated(mesh)),
                  colored.device_put(devices.replicated(mesh))).samples
  assert len(b.sharding.device_set) == 4
  np.testing.assert_allclose(devices.local_rows(b), a, atol=1e-5)


@pytest.mark.parametrize("field, value, pattern", [
    ("sampling.schedule", "cosine", "config.sampling.schedule='cosine'"),
    ("sampling.karras_rho", 0.0, "config.sampling.karras_rho"),
    ("sampling.edm.S_churn", -1.0, "config.sampling.edm.S_churn"),
    ("sampling.eta", -0.5, "config.sampling.eta"),
    ("sampling.solver_type", "rk4", "config.sampling.solver_type"),
    ("sampling.method", "ddim", "vpsde and subvpsde"),
    ("sampling.num_steps", -2, "config.sampling.num_steps"),
])
def test_bad_values_name_the_field(field, value, pattern):
  config = get_analytic_config(8, 50)
  config.sampling.method = "edm" if "edm" in field else (
      "dpmpp_2m_sde" if field in ("sampling.eta", "sampling.solver_type") else "euler")
  section, _, name = field.rpartition(".")
  target = config
  for part in section.split("."):
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
    factory.build(config, (4, 8, 8, 3))


def test_a_config_samples_with_every_method():
  """Every registered σ-schedule method builds from a config and samples the analytic model."""
  from models import analytic  # pylint: disable=g-import-not-at-top
  config = get_analytic_config(8, 50)
  config.sampling.num_steps = 3
  variables = analytic.target_variables(config)
  for method in ("euler", "heun", "edm", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde",
                 "dpmpp_3m_sde"):
    config.sampling.method = method
    x, nfe = factory.run(factory.build(config, (4, 8, 8, 3)), jax.random.PRNGKey(0), variables,
                         what=method)
    assert x.shape == (4, 8, 8, 3) and np.all(np.isfinite(x))
    assert nfe == (5 if method in ("heun", "edm") else 3)
  config.training.sde = "vpsde"
  config.sampling.method = "ddim"
  x, nfe = factory.run(factory.build(config, (4, 8, 8, 3)), jax.random.PRNGKey(0), variables)
  assert np.all(np.isfinite(x)) and nfe == 3


def test_init_mean_starts_at_the_data_mean_and_removes_the_prior_mismatch(tmp_path):
  """Analytic target with mean ~0.5 at σ_max = 10: a deterministic solver carries the standard
  prior's missing mean to the end; starting at m + σ_max ξ removes that error."""
  from models import analytic  # pylint: disable=g-import-not-at-top
  from tdas import files, settings  # pylint: disable=g-import-not-at-top
  config = get_analytic_config(8, 10)
  config.sampling.method = "heun"
  config.sampling.num_steps = 12
  variables = analytic.target_variables(config)
  mean = np.asarray(variables["target"]["mean"], np.float64)
  space_file = str(tmp_path / "space.npz")
  files.save_space(space_file, mean, np.ones_like(mean), "sqrt", 1.0, 1)
  config.sampling.tdas.update(dict(enabled=True, use_frequency=False, use_space=False,
                                   space_file=space_file, init_mean=True))
  tdas = settings.resolve(config)
  assert tdas.describe()["init_mean"] and tdas.coloring().init_mean.shape == (8, 8, 3)
  sampler = factory.build(config, (256, 8, 8, 3))
  rng = jax.random.PRNGKey(4)
  np.testing.assert_allclose(np.asarray(sampler.init(rng, tdas).x - sampler.init(rng).x),
                             np.broadcast_to(mean, (256, 8, 8, 3)), atol=1e-5)
  errors = {}
  for name, chosen in (("standard", None), ("init_mean", tdas)):
    x = np.asarray(sampler.sample(rng, variables, chosen).samples)
    errors[name] = float(np.sqrt(np.mean((x.mean(axis=0) - mean) ** 2)))
  assert errors["init_mean"] < 0.5 * errors["standard"], errors
  with pytest.raises(ValueError, match="needs the data's mean image"):
    config.sampling.tdas.space_file = ""
    settings.resolve(config)
