"""SDEs (docs/numerics.md §2): closed-form marginals, discretisations, reverse time."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

import sde_lib

SDES = {
    "vesde": lambda N=1000: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=N),
    "vpsde": lambda N=1000: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=N),
    "subvpsde": lambda N=1000: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=N),
}


def _closed_form(name, t):
  """(mean coefficient, std) of x(t) | x(0) written out independently of sde_lib."""
  if name == "vesde":
    return np.ones_like(t), 0.01 * (50.0 / 0.01) ** t
  integral_beta = 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2  # ∫_0^t beta(s) ds
  mean_coeff = np.exp(-0.5 * integral_beta)
  if name == "vpsde":
    return mean_coeff, np.sqrt(1.0 - np.exp(-integral_beta))
  return mean_coeff, 1.0 - np.exp(-integral_beta)


@pytest.mark.parametrize("name", sorted(SDES))
def test_marginal_prob_matches_closed_form(name):
  sde = SDES[name]()
  t = np.array([1e-3, 0.1, 0.5, 0.9, 1.0], np.float32)
  x = np.full((5, 2, 2, 1), 3.0, np.float32)
  mean, std = sde.marginal_prob(jnp.asarray(x), jnp.asarray(t))
  mean_coeff, expected_std = _closed_form(name, t.astype(np.float64))
  np.testing.assert_allclose(np.asarray(mean), x * mean_coeff[:, None, None, None], rtol=1e-5)
  # float32 loses digits in 1 - exp(2 m(t)) near t = 0, as the released code does.
  np.testing.assert_allclose(np.asarray(std), expected_std, rtol=5e-4)


@pytest.mark.parametrize("name", sorted(SDES))
def test_marginal_prob_matches_simulated_forward_sde(name):
  """Euler–Maruyama paths of dx = f dt + g dw from a fixed x(0) reach the stated marginal at t=0.5."""
  sde = SDES[name]()
  num_paths, num_steps, t_end = 20000, 500, 0.5
  x = jnp.full((num_paths, 1), 2.0)
  dt = t_end / num_steps

  def step(i, carry):
    x, key = carry
    key, sub = jax.random.split(key)
    t = jnp.full((num_paths,), i * dt)
    drift, diffusion = sde.sde(x, t)
    return x + drift * dt + diffusion[:, None] * np.sqrt(dt) * jax.random.normal(sub, x.shape), key

  x, _ = jax.lax.fori_loop(0, num_steps, step, (x, jax.random.PRNGKey(0)))
  mean, std = sde.marginal_prob(jnp.full((1, 1), 2.0), jnp.full((1,), t_end))
  assert abs(float(jnp.mean(x)) - float(mean[0, 0])) < 0.05 * max(1.0, float(std[0]))
  np.testing.assert_allclose(float(jnp.std(x)), float(std[0]), rtol=0.03)


@pytest.mark.parametrize("name", sorted(SDES))
def test_discretize_approaches_euler_maruyama_for_large_n(name):
  N = 100000
  sde = SDES[name](N)
  x = jnp.linspace(-1, 1, 4 * 3).reshape(4, 3)
  t = jnp.array([0.05, 0.3, 0.6, 0.95])
  f, G = sde.discretize(x, t)
  drift, diffusion = sde.sde(x, t)
  np.testing.assert_allclose(np.asarray(G), np.asarray(diffusion) / np.sqrt(N), rtol=2e-3)
  # sqrt(alpha) x - x cancels in float32: compare on the drift's own scale.
  np.testing.assert_allclose(np.asarray(f), np.asarray(drift) / N, rtol=2e-3, atol=1e-7)


def test_ve_discretize_uses_smld_noise_levels():
  sde = SDES["vesde"](N=10)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  t = jnp.array([0.0, 5 / 9, 1.0])
  _, G = sde.discretize(jnp.zeros((3, 1)), t)
  np.testing.assert_allclose(np.asarray(G), [sigmas[0], np.sqrt(sigmas[5] ** 2 - sigmas[4] ** 2),
                                             np.sqrt(sigmas[9] ** 2 - sigmas[8] ** 2)], rtol=1e-5)


def test_vp_discretize_uses_ddpm_betas():
  sde = SDES["vpsde"](N=1000)
  betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
  x = jnp.ones((2, 1))
  f, G = sde.discretize(x, jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(np.asarray(G), np.sqrt(betas[[0, 999]]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(f[:, 0]), np.sqrt(1 - betas[[0, 999]]) - 1, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SDES))
def test_prior_logp_is_the_prior_density(name):
  sde = SDES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(1), (3, 4, 4, 2))
  scale = 50.0 if name == "vesde" else 1.0
  assert abs(float(jnp.std(z)) - scale) < 0.3 * scale
  expected = stats.norm.logpdf(np.asarray(z, np.float64), scale=scale).reshape(3, -1).sum(1)
  np.testing.assert_allclose(np.asarray(sde.prior_logp(z)), expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SDES))
def test_reverse_sign_and_probability_flow_halving(name):
  sde = SDES[name]()
  x = jnp.linspace(-2, 2, 2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
  t = jnp.array([0.2, 0.7])
  score = lambda x, t: 0.5 * x + 1.0
  drift, diffusion = sde.sde(x, t)
  g2_score = (diffusion ** 2)[:, None, None, None] * score(x, t)
  rev_drift, rev_diffusion = sde.reverse(score).sde(x, t)
  np.testing.assert_allclose(np.asarray(rev_drift), np.asarray(drift - g2_score), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(rev_diffusion), np.asarray(diffusion), rtol=1e-6)
  ode_drift, ode_diffusion = sde.reverse(score, probability_flow=True).sde(x, t)
  np.testing.assert_allclose(np.asarray(ode_drift), np.asarray(drift - 0.5 * g2_score), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(ode_diffusion), 0.0)

  f, G = sde.discretize(x, t)
  G2_score = (G ** 2)[:, None, None, None] * score(x, t)
  rev_f, rev_G = sde.reverse(score).discretize(x, t)
  np.testing.assert_allclose(np.asarray(rev_f), np.asarray(f - G2_score), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(rev_G), np.asarray(G), rtol=1e-6)
  ode_f, ode_G = sde.reverse(score, probability_flow=True).discretize(x, t)
  np.testing.assert_allclose(np.asarray(ode_f), np.asarray(f - 0.5 * G2_score), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(np.asarray(ode_G), 0.0)


def _config(sde, num_scales=2000):
  return ml_collections.ConfigDict(dict(
      training=dict(sde=sde),
      model=dict(num_scales=num_scales, sigma_min=0.01, sigma_max=1348, beta_min=0.1, beta_max=20.)))


def test_get_sde_builds_any_number_of_steps():
  assert isinstance(sde_lib.get_sde(_config("vesde")), sde_lib.VESDE)
  assert sde_lib.get_sde(_config("vesde")).N == 2000
  assert sde_lib.get_sde(_config("vesde"), num_steps=100).N == 100
  assert sde_lib.get_sde(_config("vesde")).sigma_max == 1348
  assert type(sde_lib.get_sde(_config("vpsde"), 10)) is sde_lib.VPSDE
  assert type(sde_lib.get_sde(_config("subvpsde"))) is sde_lib.subVPSDE


@pytest.mark.parametrize("bad, field", [
    (lambda c: c.training.update(sde="vesdee"), "config.training.sde"),
    (lambda c: c.model.update(sigma_min=2000.0), "sigma_min"),
    (lambda c: c.model.update(num_scales=0), "N must be a positive integer"),
])
def test_get_sde_errors_name_the_field(bad, field):
  config = _config("vesde")
  bad(config)
  with pytest.raises(ValueError, match=field):
    sde_lib.get_sde(config)
