"""Class-conditional sampling (sampling/guidance.py) on the analytic two-class mixture, where the
noise-conditional posterior has a closed form: guidance with scale 1 samples one class exactly.

The mixture is ½ N(mu - o, Sigma) + ½ N(mu + o, Sigma) on 8 x 8 x 1 images; the checks against
dense float64 formulas build Sigma = Dᵀ diag(v) D from the DCT matrix and use scipy's Gaussian
densities, independently of the model's DCT-space code.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from scipy import stats
from scipy.special import logsumexp

import sde_lib
from configs.analytic import get_analytic_config
from errors import UserError
from models import analytic
from models import utils as model_utils
from sampling import devices, factory, guidance
from sampling.guidance import GuidedVariables

SIZE, SAMPLES, OFFSET = 8, 2000, 0.25


def mixture_config(sde="vesde", method="pc", steps=100, labels="uniform", scale=1.0):
  config = get_analytic_config(SIZE, 10, target_mean=(0.0,), target_mean_radial=0.0)
  config.data.num_channels = 1
  config.training.sde = sde
  config.model.class_offset = OFFSET
  config.sampling.method = method
  config.sampling.num_steps = steps
  config.sampling.guidance.labels = labels
  config.sampling.guidance.scale = scale
  config.sampling.guidance.classifier = "analytic"
  return config


VARIABLES = analytic.target_variables(mixture_config())


def dense_target():
  """(mean (d,), Sigma (d, d), offset (d,)) in float64, from the DCT matrix."""
  basis = scipy.fft.dctn(np.eye(SIZE * SIZE).reshape(-1, SIZE, SIZE), axes=(1, 2),
                         norm="ortho").reshape(SIZE * SIZE, -1)  # row k: D applied to e_k
  target = VARIABLES["target"]
  variance = np.asarray(target["dct_variance"], np.float64).reshape(-1)
  sigma = basis @ np.diag(variance) @ basis.T  # Dᵀ diag(v) D in pixel coordinates
  return (np.asarray(target["mean"], np.float64).reshape(-1), sigma,
          np.asarray(target["class_offset"], np.float64).reshape(-1))


def dense_log_posterior_and_density(x, a, s):
  """(log p(y = 1 | x) - log p(y = 0 | x), log p_t(x)) of the diffused mixture, float64."""
  mean, sigma, offset = dense_target()
  covariance = a ** 2 * sigma + s ** 2 * np.eye(mean.size)
  logs = [stats.multivariate_normal(a * (mean + sign * offset), covariance).logpdf(x)
          for sign in (-1.0, 1.0)]
  return logs[1] - logs[0], logsumexp(logs) - np.log(2.0)


def _marginal(sde_name, t):
  sde = sde_lib.get_sde(mixture_config(sde_name))
  a, s = sde.marginal_prob(jnp.ones((1, 1, 1, 1)), jnp.full((1,), t))
  return sde, float(np.asarray(a).reshape(-1)[0]), float(np.asarray(s).reshape(-1)[0])


def _points(a, count=3, spread=1.0):
  mean, _, offset = dense_target()
  noise = np.random.RandomState(0).normal(size=(count, mean.size))
  signs = np.array([1.0, -1.0, 0.3])[:count, None]
  return a * (mean + signs * offset) + spread * 0.3 * noise


@pytest.mark.parametrize("sde_name, t", [("vesde", 0.05), ("vesde", 0.5), ("vpsde", 0.1),
                                         ("subvpsde", 0.3)])
def test_mixture_score_and_classifier_match_the_dense_densities(sde_name, t):
  config = mixture_config(sde_name)
  sde, a, s = _marginal(sde_name, t)
  x = _points(a, spread=max(s, 0.2))
  batch = jnp.asarray(x.reshape(-1, SIZE, SIZE, 1), jnp.float32)
  times = jnp.full((x.shape[0],), t)
  score = model_utils.get_score_fn(sde, model_utils.create_model(config), VARIABLES, True)(
      batch, times)
  logits = analytic.AnalyticMixtureClassifier(config=config).apply(
      VARIABLES, batch, sde.marginal_prob(jnp.zeros_like(batch), times)[1])
  for k in range(x.shape[0]):
    logit, _ = dense_log_posterior_and_density(x[k], a, s)
    np.testing.assert_allclose(float(logits[k, 1] - logits[k, 0]), logit, rtol=1e-4,
                               atol=1e-3)
    # The score by central differences of the dense log density along a few directions.
    directions = np.random.RandomState(k).normal(size=(3, x.shape[1]))
    for direction in directions:
      h = 1e-4 * max(s, 0.05)
      forward = dense_log_posterior_and_density(x[k] + h * direction, a, s)[1]
      backward = dense_log_posterior_and_density(x[k] - h * direction, a, s)[1]
      expected = (forward - backward) / (2 * h)
      got = float(np.sum(np.asarray(score[k]).reshape(-1) * direction))
      np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * abs(expected) + 1e-2)


def test_classifier_gradient_matches_finite_differences_of_the_dense_posterior():
  config = mixture_config()
  sde, a, s = _marginal("vesde", 0.2)
  x = _points(a, spread=s)
  logit_fn = guidance.from_config(config).logit_fn_builder(VARIABLES)
  labels = jnp.asarray([1, 0, 1], jnp.int32)
  gradient = np.asarray(guidance.classifier_log_likelihood_grad(
      logit_fn, jnp.asarray(x.reshape(-1, SIZE, SIZE, 1), jnp.float32), jnp.full((3,), s),
      labels)).reshape(3, -1)

  def log_posterior(point, label):  # log p(y | x) = log sigmoid(±l)
    logit, _ = dense_log_posterior_and_density(point, a, s)
    return -np.logaddexp(0.0, -logit if label == 1 else logit)

  for k, label in enumerate([1, 0, 1]):
    for direction in np.random.RandomState(k).normal(size=(3, x.shape[1])):
      h = 1e-3
      expected = (log_posterior(x[k] + h * direction, label)
                  - log_posterior(x[k] - h * direction, label)) / (2 * h)
      np.testing.assert_allclose(float(gradient[k] @ direction), expected, rtol=2e-3,
                                 atol=1e-4)


def _sample(config, seed=0, shape=(SAMPLES, SIZE, SIZE, 1)):
  sampler = factory.build(config, shape)
  rules = sampler.setup.guidance
  labels = rules.labels_for(shape[0])
  x = sampler.sample(jax.random.PRNGKey(seed),
                     GuidedVariables(VARIABLES, VARIABLES, jnp.asarray(labels)))[0]
  return np.asarray(x), labels


def _class_of(x):
  """The mixture's Bayes classifier at t = 0: the sign of the exact posterior logit (N,)."""
  mean, _, offset = dense_target()
  dct = analytic._dct_np  # pylint: disable=protected-access
  weights = dct(offset.reshape(1, SIZE, SIZE, 1)) / np.asarray(
      VARIABLES["target"]["dct_variance"], np.float64)[None]
  coefficients = dct(x.astype(np.float64) - mean.reshape(1, SIZE, SIZE, 1))
  return (np.sum(coefficients * weights, axis=(1, 2, 3)) > 0).astype(np.int32)


def _w2_per_class(x, labels):
  return [analytic.dct_diagonal_w2(x[labels == y], analytic.class_variables(VARIABLES, y))
          for y in (0, 1)]


def _floor():
  exact = np.asarray(analytic.sample_target(jax.random.PRNGKey(5), VARIABLES, SAMPLES // 2,
                                            labels=np.ones(SAMPLES // 2, np.int32)))
  return analytic.dct_diagonal_w2(exact, analytic.class_variables(VARIABLES, 1))


@pytest.mark.parametrize("method, steps", [("pc", 100), ("dpmpp_2m_sde", 80)])
def test_guidance_with_scale_one_samples_each_requested_class(method, steps):
  x, labels = _sample(mixture_config(method=method, steps=steps))
  np.testing.assert_array_equal(labels[:4], [0, 1, 0, 1])  # 'uniform': 0, 1 cycled
  # Exact class samples are classified right 97.7 % of the time (2 offsets apart, ±2 std).
  assert np.mean(_class_of(x) == labels) > 0.95
  mean, _, offset = dense_target()
  floor = _floor()
  for y, w2 in zip((0, 1), _w2_per_class(x, labels)):
    # The class's mean along the offset: (x - mean)·o / |o|² is 2y - 1 within 4 standard errors.
    along = (x[labels == y].reshape(-1, mean.size) - mean) @ offset / (offset @ offset)
    assert abs(along.mean() - (2 * y - 1)) < 4 * along.std() / np.sqrt(along.size)
    # Mean and every DCT coefficient's spread: near the floor of as many exact samples (0.008;
    # exact samples of the other class measure 0.14, of the mixture 0.07).
    assert w2 < 2 * floor, (w2, floor)


def test_guidance_with_scale_zero_samples_the_mixture():
  x, labels = _sample(mixture_config(scale=0.0))
  share = np.mean(_class_of(x))
  assert abs(share - 0.5) < 0.05  # binomial sd 0.011 at 2000 samples
  assert 0.4 < np.mean(_class_of(x) == labels) < 0.6  # the labels are ignored


def test_labels_and_guidance_survive_four_devices_and_chunked_runs():
  assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
  config = mixture_config(steps=20, labels="1,0,0")
  shape = (16, SIZE, SIZE, 1)
  one = factory.build(config, shape)
  mesh = devices.batch_mesh()
  four = factory.build(config, shape, batch_sharding=devices.batch_sharding(mesh))
  labels = jnp.asarray(one.setup.guidance.labels_for(16))
  np.testing.assert_array_equal(np.asarray(labels)[:6], [1, 0, 0, 1, 0, 0])
  variables = GuidedVariables(VARIABLES, VARIABLES, labels)
  rng = jax.random.PRNGKey(3)
  a = one.sample(rng, variables).samples
  b = four.sample(rng, jax.device_put(variables, devices.replicated(mesh))).samples
  np.testing.assert_allclose(np.asarray(a), devices.local_rows(b), atol=1e-5)
  state = one.init(rng)
  for start in range(0, one.num_steps, 7):
    state = one.advance(state, variables, start, num=7)
  np.testing.assert_array_equal(np.asarray(one.finish(state).samples), np.asarray(a))
  unguided = factory.build(mixture_config(steps=20, labels=""), shape)
  assert unguided.setup.guidance is None
  assert float(jnp.max(jnp.abs(unguided.sample(rng, VARIABLES).samples - a))) > 0.1


@pytest.mark.parametrize("field, value, match", [
    ("labels", "2", r"\[2\] out of range; the classifier has 2 classes"),
    ("labels", "seven", "must be a class index"),
    ("scale", -1.0, "guidance.scale=-1.0 must be >= 0"),
    ("classifier", "", "guidance.classifier is empty"),
])
def test_bad_guidance_fields_are_one_clear_error(field, value, match):
  config = mixture_config()
  setattr(config.sampling.guidance, field, value)
  with pytest.raises(UserError, match=match):
    guidance.from_config(config)


def test_analytic_classifier_needs_the_mixture_and_guided_variables():
  config = mixture_config()
  config.model.class_offset = 0.0
  with pytest.raises(UserError, match="class_offset > 0"):
    guidance.from_config(config)
  sampler = factory.build(mixture_config(steps=2), (4, SIZE, SIZE, 1))
  with pytest.raises(UserError, match="GuidedVariables"):
    sampler.sample(jax.random.PRNGKey(0), VARIABLES)


def test_sample_mode_writes_labels_grid_rows_and_fingerprints_the_guidance(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import run_lib  # pylint: disable=g-import-not-at-top
  from sample_rounds import FingerprintMismatch  # pylint: disable=g-import-not-at-top
  config = mixture_config(steps=20, labels="1,0,0", scale=2.0)
  config.data.num_channels = 1
  config.eval.batch_size, config.eval.num_samples = 8, 12
  summary = run_lib.sample(config, str(tmp_path))
  out = tmp_path / "eval"
  with np.load(out / "samples_1.npz") as round_one:
    np.testing.assert_array_equal(round_one["labels"], [1, 0, 0, 1])  # 12 - 8 rows left
    recorded = json.loads(str(round_one["fingerprint"]))
  assert recorded["guidance.labels"] == "1,0,0" and recorded["guidance.scale"] == 2.0
  assert not [k for k in recorded if k.startswith("sampling.guidance")]  # no file paths
  assert len(recorded["guidance.classifier_sha256"]) == 64
  assert summary["guidance"] == dict(classifier="analytic", checkpoint="", scale=2.0,
                                     labels=[1, 0, 0], num_classes=2)
  assert json.loads((out / "sampling.json").read_text())["guidance"]["labels"] == [1, 0, 0]
  # The grid: classes 0 and 1 get 5 rows of 10 tiles each; round 0's 8 samples fill one row
  # of each (8 px images are enlarged to the grid's tile size; 2-px gaps).
  grid = np.asarray(Image.open(out / "samples_grid.png"))
  tile = (grid.shape[0] - 2) // 2
  assert grid.shape[1] == 10 * tile + 9 * 2
  # Another label is another draw: the kept rounds do not match it.
  config.sampling.guidance.labels = "0"
  with pytest.raises(FingerprintMismatch, match="guidance.labels"):
    run_lib.sample(config, str(tmp_path))
  assert os.path.isfile(out / "samples_0.npz")


def test_class_grid_gives_each_class_its_rows():
  import images  # pylint: disable=g-import-not-at-top
  size, step = 64, 66  # 64 px tiles are not enlarged (images.MIN_TILE); 2-px gaps
  tiles = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 1),
                                                                        np.uint8)
  full = 10 * step - 2
  assert images.class_grid(tiles, np.full(100, 7)).shape[:2] == (full, full)  # 10 rows of 7s
  ten = images.class_grid(tiles, np.arange(100) % 10)
  assert ten.shape[:2] == (full, full)
  np.testing.assert_array_equal(ten[3 * step, ::step, 0][:10], np.arange(3, 100, 10))  # class 3
  uneven = images.class_grid(tiles[:3], np.array([0, 1, 1]))  # a row each; white padding
  assert uneven.shape[:2] == (2 * step - 2, full)
  np.testing.assert_array_equal(uneven[0, ::step, 0][:3], [0, 255, 255])
  np.testing.assert_array_equal(uneven[step, ::step, 0][:3], [1, 2, 255])


def test_the_shipped_digits_classifier_reads_noisy_digits_and_its_gradient_leads_to_the_class():
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  from evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
  import run_lib  # pylint: disable=g-import-not-at-top
  config = digits_ncsnpp.get_config()
  config.sampling.guidance.labels = "7"
  rules = guidance.from_config(config)
  assert rules.num_classes == 10 and rules.labels == (7,)
  params = run_lib._classifier_variables(rules, None)  # pylint: disable=protected-access
  logit_fn = rules.logit_fn_builder(params)
  images, labels = digits_classifier.digits_split(evaluation=True)
  x = jnp.asarray(images[:60]) + 0.05 * jax.random.normal(jax.random.PRNGKey(0), (60, 16, 16, 1))
  logits = logit_fn(x, jnp.full((60,), 0.05))
  assert np.mean(np.argmax(np.asarray(logits), axis=1) == labels[:60]) > 0.9
  # At σ = 0.5, a small step along ∇ log p(7 | x) raises p(7 | x) (for all but images already
  # read as sevens, where the step may overshoot).
  noisy = jnp.asarray(images[:60]) + 0.5 * jax.random.normal(jax.random.PRNGKey(1),
                                                            (60, 16, 16, 1))
  sevens, sigma = jnp.full((60,), 7, jnp.int32), jnp.full((60,), 0.5)
  gradient = guidance.classifier_log_likelihood_grad(logit_fn, noisy, sigma, sevens)
  log_p = lambda z: jax.nn.log_softmax(logit_fn(z, sigma))[:, 7]
  increase = np.asarray(log_p(noisy + 0.01 * gradient) - log_p(noisy))
  assert np.mean(increase > 0) > 0.9 and np.mean(increase) > 0


@pytest.mark.parametrize("field, value, match", [
    ("data.image_size", 32, "data.image_size=16"),
    ("training.sde", "vpsde", "training.sde='vesde'"),
])
def test_a_classifier_that_does_not_fit_the_score_model_is_one_clear_error(field, value, match):
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  config = digits_ncsnpp.get_config()
  config.sampling.guidance.labels = "7"
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(UserError, match=match):
    guidance.from_config(config)
  config = digits_ncsnpp.get_config()
  config.sampling.guidance.labels = "7"
  config.sampling.guidance.classifier = "configs/demo/no_such_classifier.py"
  with pytest.raises(UserError, match="no such config file"):
    guidance.from_config(config)
