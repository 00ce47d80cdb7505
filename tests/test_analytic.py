"""The analytic Gaussian score model (models/analytic.py) and its configs (configs/analytic/).

The score through `get_score_fn` is checked against a dense-covariance computation for VE, VP and
subVP; the target's fitting, sampling and W2/band metrics against their statistics; the score
error of docs/numerics.md §7 against its gamma profile. Images are 4-8 px and every score test uses
the same shapes, so the eager primitives compile once.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

import sde_lib
from configs.analytic import get_analytic_config
from models import analytic  # registers 'analytic_gaussian'  # noqa: F401
from models import utils as model_utils

CONFIG_NAMES = ('ffhq32', 'ffhq64', 'lsun256')
SDE_NAMES = ('vesde', 'vpsde', 'subvpsde')
SHAPE = (4, 4, 2)  # (H, W, C) of every score test: one compile per primitive


def small_config(sde='vesde', image_size=4, channels=2, target_mean=0.5, **model_fields):
  """An analytic config at `image_size` px with `channels` channels and model fields overridden.

  Fields are replaced, not assigned, so their type may change (a scalar `target_std` may become a
  per-channel tuple); ConfigDict's type-safe assignment would refuse that.
  """
  config = get_analytic_config(image_size=image_size, sigma_max=50, target_mean=target_mean)
  config.data.num_channels = channels
  config.training.sde = sde
  model = config.model.to_dict()
  model.update(model_fields)
  config.model = model
  return config


def random_target(rng, shape):
  """A mean in [0.3, 0.7] and DCT variances in [0.01, 0.5] (H, W, C), float32."""
  mean = rng.uniform(0.3, 0.7, shape).astype(np.float32)
  variance = rng.uniform(0.01, 0.5, shape).astype(np.float32)
  return mean, variance


def dct_matrix(shape):
  """The orthonormal DCT over (H, W) of an (H, W, C) image as a matrix M: D(x).ravel() = M x."""
  dim = int(np.prod(shape))
  basis = np.eye(dim).reshape((dim,) + shape)
  return scipy.fft.dctn(basis, type=2, axes=(1, 2), norm='ortho').reshape(dim, dim).T


def dct_np(x):
  return scipy.fft.dctn(np.asarray(x, np.float64), type=2, axes=(1, 2), norm='ortho')


def score_through_model(config, variables, x, t):
  """The score of `get_score_fn(sde, model, variables, continuous=True)`, float64 numpy.

  Eager, not jitted: every test feeds the same shapes (SHAPE, batch len(T)), so each primitive
  compiles once for the whole module.
  """
  sde = sde_lib.get_sde(config)
  model = model_utils.create_model(config)
  score_fn = model_utils.get_score_fn(sde, model, variables, continuous=True)
  return np.asarray(score_fn(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)),
                    np.float64)


# ---------------------------------------------------------------------------------------------
# Exact score.


@pytest.mark.parametrize('sde_name', SDE_NAMES)
def test_score_equals_dense_covariance_score(sde_name):
  rng = np.random.default_rng(0)
  config = small_config(sde_name)
  mean, variance = random_target(rng, SHAPE)
  variables = analytic.variables_from_target(mean, variance)
  sde = sde_lib.get_sde(config)
  t = np.array([sde.sampling_eps, 0.1, 0.5, 1.0], np.float32)
  x = (rng.standard_normal((len(t),) + SHAPE) + 0.5).astype(np.float32)

  score = score_through_model(config, variables, x, t)

  M = dct_matrix(SHAPE)
  sigma = M.T @ np.diag(variance.astype(np.float64).ravel()) @ M
  a, s = (np.asarray(v, np.float64) for v in sde.marginal_prob(jnp.ones((len(t),)), t))
  for k in range(len(t)):
    a_k = a[k] if sde_name != 'vesde' else 1.0
    covariance = a_k ** 2 * sigma + s[k] ** 2 * np.eye(len(sigma))
    expected = -np.linalg.solve(covariance, x[k].ravel() - a_k * mean.ravel())
    np.testing.assert_allclose(score[k].ravel(), expected, rtol=0,
                               atol=2e-5 * np.abs(expected).max(), err_msg=f't={t[k]}')


def test_power_law_target_from_init_is_the_config_target():
  config = small_config('vpsde', target_mean=(0.52, 0.43))
  model = model_utils.create_model(config)
  x = jnp.zeros((4,) + SHAPE)
  variables = model.init(jax.random.PRNGKey(0), x, jnp.ones((4,)), train=False)
  assert set(variables) == {'target'}
  expected = analytic.target_variables(config)['target']
  for key in ('mean', 'dct_variance'):
    np.testing.assert_array_equal(variables['target'][key], expected[key])


def test_power_law_target_has_the_configured_spectrum_std_and_mean():
  config = small_config(image_size=16, channels=3, target_mean=(0.52, 0.43, 0.38),
                        target_std=(0.2, 0.25, 0.3), power_law_alpha=2.0, power_law_f0=1.0,
                        target_mean_radial=0.1)
  mean, variance = analytic.power_law_target(config)
  assert mean.shape == variance.shape == (16, 16, 3)
  # RMS per-pixel std per channel = target_std (the DCT is orthonormal).
  np.testing.assert_allclose(np.sqrt(variance.sum(axis=(0, 1)) / 256), [0.2, 0.25, 0.3],
                             rtol=1e-5)
  f = analytic.frequency_radius(16, 16)
  profile = variance[..., 0] * (f + 1.0) ** 2
  np.testing.assert_allclose(profile, profile[0, 0], rtol=1e-5)
  # Smooth mean in [0, 1], brighter in the centre: 0.1 from the centre to the corners.
  assert 0 <= mean.min() and mean.max() <= 1
  np.testing.assert_allclose(mean[0, 0], np.array([0.52, 0.43, 0.38]) - 0.05, atol=1e-6)
  assert np.all(mean[8, 8] > mean[0, 0] + 0.09)


@pytest.mark.parametrize('field, value, match', [
    ('power_law_f0', 0.0, 'power_law_f0'),
    ('power_law_alpha', -1.0, 'power_law_alpha'),
    ('target_std', 0.0, 'target_std'),
    ('target_mean', (0.5, 0.5, 0.5, 0.5), 'target_mean'),
    ('target_mean_radial', 3.0, 'target_mean_radial'),
])
def test_power_law_target_rejects_bad_fields(field, value, match):
  with pytest.raises(ValueError, match=match):
    analytic.power_law_target(small_config(**{field: value}))


# ---------------------------------------------------------------------------------------------
# Fitting, sampling, metrics: one 8×8×3 target and 4096 exact draws shared by the tests.


@pytest.fixture(scope='module')
def drawn():
  """(mean, variance, variables, samples (4096, 8, 8, 3) numpy) of a random target."""
  mean, variance = random_target(np.random.default_rng(1), (8, 8, 3))
  variables = analytic.variables_from_target(mean, variance)
  samples = np.asarray(analytic.sample_target(jax.random.PRNGKey(1), variables, 4096))
  return mean, variance, variables, samples


def test_fit_target_recovers_mean_and_variances_of_exact_samples(drawn):
  mean, variance, _, samples = drawn
  n = len(samples)
  assert samples.shape == (n, 8, 8, 3) and samples.dtype == np.float32
  fit_mean, fit_variance = analytic.fit_target(samples, batch_size=512)
  # D(m_fit - mu) ~ N(0, v / n) per coefficient; v_fit / v - 1 has std sqrt(2 / (n - 1)).
  z_mean = dct_np(fit_mean[None] - mean[None])[0] / np.sqrt(variance / n)
  assert np.abs(z_mean).max() < 5
  assert np.abs(fit_variance / variance - 1).max() < 5 * np.sqrt(2 / (n - 1))
  # Chunking does not change the result.
  again = analytic.fit_target(samples, batch_size=999)
  np.testing.assert_allclose(again[0], fit_mean, rtol=1e-6)
  np.testing.assert_allclose(again[1], fit_variance, rtol=1e-6)


def test_w2_of_exact_samples_is_small_and_shrinks_like_one_over_sqrt_n(drawn):
  mean, variance, variables, samples = drawn
  w2 = {n: analytic.dct_diagonal_w2(samples[:n], variables) for n in (256, 4096)}
  # E[W2² dim] ≈ sum(v) / n (mean) + sum(v) / (2 n) (square roots of variances).
  for n, value in w2.items():
    predicted = np.sqrt(1.5 * variance.sum() / n / variance.size)
    assert 0.7 * predicted < value < 1.3 * predicted, (n, value, predicted)
  assert w2[4096] < w2[256] / 3
  # A wrong target is far: stds 20% too large.
  wrong = analytic.variables_from_target(mean, 1.44 * variance)
  assert analytic.dct_diagonal_w2(samples, wrong) > 10 * w2[4096]


def test_band_std_ratio_is_one_for_exact_samples_and_sees_amplified_bands(drawn):
  mean, variance, variables, samples = drawn
  ratios = analytic.band_std_ratio(samples, variables, num_bands=4)
  assert ratios.shape == (4,)
  np.testing.assert_allclose(ratios, 1.0, atol=0.03)
  # Scale every coefficient with rho >= 0.5 by 1.2: only the upper two bands see it.
  rho = analytic.normalized_radius(8, 8)[None, :, :, None]
  boosted = scipy.fft.idctn(np.where(rho >= 0.5, 1.2, 1.0) * dct_np(samples - mean),
                            axes=(1, 2), norm='ortho') + mean
  ratios = analytic.band_std_ratio(boosted, variables, num_bands=4)
  np.testing.assert_allclose(ratios[:2], 1.0, atol=0.03)
  np.testing.assert_allclose(ratios[2:], 1.2, atol=0.04)
  # A band with no coefficient is NaN (2×2 image, 8 bands).
  small = analytic.variables_from_target(mean[:2, :2], variance[:2, :2])
  assert np.isnan(analytic.band_std_ratio(samples[:8, :2, :2], small, num_bands=8)).any()


# ---------------------------------------------------------------------------------------------
# Score error (docs/numerics.md §7).


@pytest.mark.parametrize('sde_name, e', [('vesde', 0.2), ('vpsde', 0.2), ('vesde', -0.3)])
def test_score_error_is_identity_above_sigma_c_and_gamma_below(sde_name, e):
  rng = np.random.default_rng(4)
  mean, variance = random_target(rng, SHAPE)
  variables = analytic.variables_from_target(mean, variance)
  exact_config = small_config(sde_name)
  erring_config = small_config(sde_name, score_error=True, score_error_e=e, score_error_p=1.0,
                               score_error_sigma_c=0.27)
  sde = sde_lib.get_sde(exact_config)
  t = np.array([0.01, 0.05, 0.6, 0.9], np.float32)
  stds = np.asarray(sde.marginal_prob(jnp.ones((4,)), t)[1])
  below = stds < 0.27
  assert below.any() and not below.all()
  x = (rng.standard_normal((4,) + SHAPE) + 0.5).astype(np.float32)

  erred = dct_np(score_through_model(erring_config, variables, x, t))
  exact = dct_np(score_through_model(exact_config, variables, x, t))
  gamma = 1 - e * analytic.normalized_radius(*SHAPE[:2])[:, :, None]
  for k in range(4):
    expected = (gamma if below[k] else 1.0) * exact[k]
    np.testing.assert_allclose(erred[k], expected, rtol=0, atol=1e-5 * np.abs(exact[k]).max(),
                               err_msg=f't={t[k]}')
  # Tolerances: each DCT coefficient is a float32 sum over the H·W pixels of the score, so its
  # rounding error scales with the whole spectrum (max |exact|), not with the coefficient itself;
  # a small coefficient (the top-frequency corner, ~1e-3 of the max) can carry a relative error
  # of 1e-4 on one CPU and not on another (measured: 1.7e-6 absolute, 4e-8 of the max). 1e-6 of
  # the max is about 10 float32 ulps of it.
  scale = 1e-6 * np.abs(exact).max(axis=(1, 2, 3))
  # gamma at rho = 0 is 1: the DC coefficient (the mean brightness) is always exact.
  np.testing.assert_allclose(erred[:, 0, 0], exact[:, 0, 0], rtol=0, atol=scale.max())
  # The top-frequency corner is scaled by 1 - e below sigma_c, and nothing changes above it.
  np.testing.assert_allclose(erred[below, -1, -1], (1 - e) * exact[below, -1, -1], rtol=0,
                             atol=scale[below].max())
  np.testing.assert_allclose(erred[~below], exact[~below], rtol=0, atol=scale[~below].max())
  # The corner's change is far above that tolerance, so the checks above can fail.
  assert np.all(np.abs(e * exact[below, -1, -1]) > 10 * scale[below, None])


@pytest.mark.parametrize('field, value', [('score_error_e', 1.0), ('score_error_p', 0.0),
                                          ('score_error_sigma_c', -1.0)])
def test_score_error_rejects_bad_fields(field, value):
  config = small_config(score_error=True, **{field: value})
  model = model_utils.create_model(config)
  with pytest.raises(ValueError, match=field):
    model.init(jax.random.PRNGKey(0), jnp.zeros((4,) + SHAPE), jnp.ones((4,)), train=False)


def test_model_rejects_discrete_labels_and_mismatched_shapes():
  config = small_config()
  model = model_utils.create_model(config)
  variables = analytic.target_variables(config)
  x = jnp.zeros((4,) + SHAPE)
  with pytest.raises(ValueError, match='continuous'):
    model.apply(variables, x, jnp.ones((4,), jnp.int32), train=False)
  with pytest.raises(ValueError, match='image_size'):
    model.apply(variables, jnp.zeros((4, 8, 8, 2)), jnp.ones((4,)), train=False)
  config.training.continuous = False
  with pytest.raises(ValueError, match='training.continuous'):
    model_utils.create_model(config).apply(variables, x, jnp.ones((4,)))


# ---------------------------------------------------------------------------------------------
# Configs.


def load(name):
  return importlib.import_module(f'configs.analytic.{name}').get_config()


@pytest.mark.parametrize('name, size, sigma_max', [('ffhq32', 32, 50), ('ffhq64', 64, 100),
                                                   ('lsun256', 256, 348)])
def test_config_loads_and_init_shapes_the_target(name, size, sigma_max):
  config = load(name)
  assert config.model.name == 'analytic_gaussian'
  assert (config.data.image_size, config.data.num_channels) == (size, 3)
  assert config.data.centered is False
  assert (config.training.sde, config.training.continuous) == ('vesde', True)
  assert (config.model.sigma_min, config.model.sigma_max) == (0.01, sigma_max)
  assert config.model.num_scales == 2000
  assert (config.model.beta_min, config.model.beta_max) == (0.1, 20.)
  assert (config.sampling.predictor, config.sampling.corrector) == ('reverse_diffusion',
                                                                    'langevin')
  assert config.sampling.snr in (0.15, 0.075)
  assert 'tdas' in config.sampling and config.sampling.tdas.enabled is False
  assert config.model.score_error is False
  model = model_utils.create_model(config)
  x = jnp.zeros((1, size, size, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.ones((1,)),
                                             train=False))
  assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == {
      'target': {'mean': (size, size, 3), 'dct_variance': (size, size, 3)}}


@pytest.mark.parametrize('name', CONFIG_NAMES)
@pytest.mark.parametrize('sde_name', SDE_NAMES)
def test_config_with_any_sde_traces_through_get_score_fn(name, sde_name):
  """`--config.training.sde=vpsde|subvpsde` works: the score function traces (no compile).

  The numbers are those of the small configs above (same code path, dense check).
  """
  config = load(name)
  config.training.sde = sde_name
  size = config.data.image_size
  sde = sde_lib.get_sde(config)
  model = model_utils.create_model(config)
  variables = jax.eval_shape(lambda: analytic.target_variables(config))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.float32)
  out = jax.eval_shape(
      lambda v, x, t: model_utils.get_score_fn(sde, model, v, continuous=True)(x, t),
      variables, x, t)
  assert (out.shape, out.dtype) == ((2, size, size, 3), jnp.float32)


def test_fit_target_with_a_known_mean_skips_a_pass_and_agrees():
  images = np.random.default_rng(5).uniform(0, 1, (40, 8, 8, 3))
  mean, variance = analytic.fit_target(images, batch_size=16)
  passes = []

  def batches():
    passes.append(1)
    return (images[s:s + 16] for s in range(0, 40, 16))

  mean2, variance2 = analytic.fit_target(batches, mean=images.mean(axis=0))
  assert len(passes) == 1
  np.testing.assert_allclose(mean2, mean, rtol=1e-6)
  np.testing.assert_allclose(variance2, variance, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16, 24, 2), (1, 514, 4, 1)])  # matrix DCT; FFT above 512
def test_score_dcts_are_the_orthonormal_dct_by_either_route(shape):
  x = np.random.RandomState(1).randn(*shape)
  coefficients = scipy.fft.dctn(x, type=2, axes=(1, 2), norm="ortho")
  np.testing.assert_allclose(np.asarray(analytic._dct2(x.astype(np.float32))), coefficients,
                             atol=2e-5)
  np.testing.assert_allclose(np.asarray(analytic._idct2(coefficients.astype(np.float32))), x,
                             atol=2e-5)
