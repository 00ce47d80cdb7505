"""Bits/dim through the probability-flow ODE, exact on the analytic Gaussian target.

The analytic model's probability-flow map is affine in the DCT basis, so its log-density at eps
has a closed form: in DCT coefficients x̂ (target mean m̂, variances v),
x̂_T = m̂ + sqrt((v + σ_T²) / (v + σ_eps²)) (x̂ − m̂) and
log p(x) = log N(x_T; 0, σ_T² I) + ½ Σ log((v + σ_T²) / (v + σ_eps²)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import likelihood
import sde_lib
from configs.analytic import get_analytic_config
from models import analytic
from models import utils as model_utils
from tdas import transforms

EPS = 1e-5


@pytest.fixture(scope="module")
def analytic_case():
  config = get_analytic_config(image_size=8, sigma_max=20)
  config.data.centered = True
  model = model_utils.create_model(config)
  variables = analytic.target_variables(config)
  sde = sde_lib.get_sde(config)
  builder = lambda v: model_utils.get_score_fn(sde, model, v, continuous=True)
  x = analytic.sample_target(jax.random.PRNGKey(0), variables, 4)
  return config, sde, builder, variables, jnp.asarray(x, jnp.float32)


def _closed_form_bpd(sde, variables, x):
  target = variables[analytic.TARGET_COLLECTION]
  mean, var = np.asarray(target["mean"], np.float64), np.asarray(target["dct_variance"],
                                                                 np.float64)
  s_eps2 = float(sde.marginal_prob(jnp.zeros(1), jnp.asarray([EPS]))[1][0]) ** 2
  s_T2 = sde.sigma_max ** 2
  x = np.asarray(x, np.float64)
  coeff = np.asarray(transforms.dct2(x - mean), np.float64)
  gain = np.sqrt((var + s_T2) / (var + s_eps2))
  latent = mean + np.asarray(transforms.idct2(gain * coeff), np.float64)
  dims = np.prod(x.shape[1:])
  prior = -dims / 2 * np.log(2 * np.pi * s_T2) - (latent ** 2).reshape(len(x), -1).sum(1) / (
      2 * s_T2)
  log_p = prior + np.log(gain).sum()
  return -log_p / (dims * np.log(2)) + 7.0, latent


def test_exact_divergence_gives_the_closed_form_bits_per_dim(analytic_case):
  _, sde, builder, variables, x = analytic_case
  solver = likelihood.Likelihood(sde, builder, x.shape, divergence="exact", rtol=1e-6,
                                 atol=1e-6, eps=EPS, centered=True)
  result = solver(jax.random.PRNGKey(1), variables, x)
  expected, latent = _closed_form_bpd(sde, variables, x)
  np.testing.assert_allclose(np.asarray(result.bpd), expected, atol=1e-3)
  np.testing.assert_allclose(np.asarray(result.latent), latent, rtol=1e-3, atol=1e-3 * 20)
  assert result.nfe > 10


@pytest.mark.parametrize("probe", likelihood.PROBES)
def test_hutchinson_agrees_within_its_standard_error(analytic_case, probe):
  _, sde, builder, variables, x = analytic_case
  repeated = jnp.repeat(x[:1], 16, axis=0)  # one image, 16 independent probes
  solver = likelihood.Likelihood(sde, builder, repeated.shape, divergence="hutchinson",
                                 probe=probe, rtol=1e-5, atol=1e-5, eps=EPS, centered=True)
  bpd = np.asarray(solver(jax.random.PRNGKey(2), variables, repeated).bpd)
  expected = _closed_form_bpd(sde, variables, x[:1])[0][0]
  standard_error = bpd.std(ddof=1) / np.sqrt(len(bpd))
  assert abs(bpd.mean() - expected) < 4 * standard_error + 1e-4
  assert bpd.std() > 0  # the probes differ


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match="bpd_divergence='trace'"):
    likelihood.Likelihood(None, None, (1, 2, 2, 1), divergence="trace")
  with pytest.raises(ValueError, match="bpd_rtol=0"):
    likelihood.Likelihood(None, None, (1, 2, 2, 1), rtol=0)


def test_dequantization_stays_in_its_bin():
  images = np.array([[[[0]], [[255]]]], np.uint8)
  u = np.asarray(likelihood.dequantize(images, jax.random.PRNGKey(3)))
  assert (u >= images / 256).all() and (u < (images.astype(float) + 1) / 256).all()


def test_likelihood_mode_on_the_shipped_digits_model(tmp_path):
  """`--mode likelihood` reads the held-out digits, dequantises them and writes likelihood.json."""
  import json  # pylint: disable=g-import-not-at-top
  import run_lib  # pylint: disable=g-import-not-at-top
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  config = digits_ncsnpp.get_config()
  config.eval.bpd_num_images = 6
  config.eval.bpd_batch_size = 4  # a full batch, then a padded one of 2
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
  result = run_lib.likelihood_mode(config, str(tmp_path))
  on_disk = json.load(open(tmp_path / "eval" / "likelihood.json"))
  assert on_disk == json.loads(json.dumps(result))
  assert result["num_images"] == 6 and result["divergence"] == "hutchinson"
  assert 0.5 < result["mean"] < 8 and result["std"] > 0 and result["nfe"] > 2
  assert result["source"].endswith("checkpoint_10000")
