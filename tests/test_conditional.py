"""Inpainting and colourisation with the exact analytic score: the filled components' sample
mean and covariance against the closed-form Gaussian conditional, the known ones returned as
given.

The analytic target is Gaussian with a covariance diagonal in the DCT basis, so the conditional
of the unknown components given the known ones is a linear solve. score_sde's replacement
method is approximate at finite steps: at 1000 steps the filled variances come out a few per
cent high. The bounds allow sampling error (1000 samples) plus that, and the conditional
variances are well below the marginal ones an unconditioned sampler would give.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from configs.analytic import get_analytic_config
from models import analytic
from models import utils as model_utils
from sampling import conditional
from sampling.interface import SamplerSetup
from tdas import transforms

SIZE, SAMPLES, STEPS = 8, 1000, 1000


def _target(channels):
  config = get_analytic_config(image_size=SIZE, sigma_max=20)
  config.data.num_channels = channels
  config.model.target_mean = (0.5, 0.45, 0.4)[:channels]
  model = model_utils.create_model(config)
  variables = analytic.target_variables(config)
  target = variables[analytic.TARGET_COLLECTION]
  mean = np.asarray(target["mean"], np.float64).reshape(-1)
  variance = np.asarray(target["dct_variance"], np.float64)
  # Pixel covariance: the DCT of each channel is orthonormal, the channels independent.
  dims = SIZE * SIZE * channels
  basis = np.eye(dims).reshape(dims, SIZE, SIZE, channels)
  dct = np.stack([np.asarray(transforms.dct2(jnp.asarray(b[None])), np.float64).reshape(-1)
                  for b in basis], axis=1)
  covariance = dct.T @ np.diag(variance.reshape(-1)) @ dct
  return model, variables, mean, covariance


def _sampler(model, channels, space):
  sde = sde_lib.VESDE(0.01, 20.0, STEPS)
  setup = SamplerSetup(sde=sde, shape=(SAMPLES, SIZE, SIZE, channels), eps=1e-5,
                       score_fn_builder=lambda v: model_utils.get_score_fn(sde, model, v, True))
  return conditional.ConditionalPCSampler(setup, space=space, snr=0.3, n_steps_each=1)


def _conditional(mean, covariance, known, value):
  """Mean and covariance of the unknown components given the known ones = value."""
  u = ~known
  gain = covariance[np.ix_(u, known)] @ np.linalg.inv(covariance[np.ix_(known, known)])
  return (mean[u] + gain @ (value - mean[known]),
          covariance[np.ix_(u, u)] - gain @ covariance[np.ix_(known, u)])


def _check(samples, expected_mean, expected_covariance):
  se = np.sqrt(np.diag(expected_covariance) / len(samples))
  z = np.abs(samples.mean(0) - expected_mean) / se
  ratio = np.diag(np.cov(samples, rowvar=False)) / np.diag(expected_covariance)
  off = np.abs(np.cov(samples, rowvar=False) - expected_covariance).max()
  assert z.max() < 4.5, z.max()
  # The variances: each within sampling error (sd sqrt(2 / 1000) = 0.045, up to ~3.5 sd over 128
  # components) of a bias of a few per cent (colour at 2000 samples: 0.97-1.14, mean 1.04).
  assert 0.95 < ratio.mean() < 1.08, ratio.mean()
  assert 0.85 < ratio.min() and ratio.max() < 1.2, (ratio.min(), ratio.max())
  assert off < 0.15 * np.abs(expected_covariance).max()


def _sigma_method(method, channels):
  """A σ-schedule method with the config's Langevin correction (snr 0.16, one step per σ)."""
  config = get_analytic_config(image_size=SIZE, sigma_max=20)
  config.data.num_channels = channels
  config.model.target_mean = (0.5, 0.45, 0.4)[:channels]
  config.sampling.method = method
  config.sampling.num_steps = STEPS
  return conditional.build(config, (SAMPLES, SIZE, SIZE, channels), "pixels")


@pytest.mark.parametrize("method", ["pc", "euler_ancestral"])
def test_inpainting_samples_the_gaussian_conditional(method):
  model, variables, mean, covariance = _target(1)
  mask = np.ones((SIZE, SIZE, 1), np.float32)
  mask[2:6, 2:6] = 0  # the centre 4 x 4 unknown
  known = mask.reshape(-1) == 1
  y = np.asarray(analytic.sample_target(jax.random.PRNGKey(5), variables, 1))[0]
  data = np.broadcast_to(y, (SAMPLES, SIZE, SIZE, 1))
  sampler = _sampler(model, 1, "pixels") if method == "pc" else _sigma_method(method, 1)
  result = sampler.sample(jax.random.PRNGKey(1), variables, data, mask[None])
  x = np.asarray(result.samples, np.float64).reshape(SAMPLES, -1)
  np.testing.assert_array_equal(x[:, known], np.broadcast_to(y.reshape(-1)[known],
                                                             (SAMPLES, known.sum())))
  expected_mean, expected_covariance = _conditional(mean, covariance, known, y.reshape(-1)[known])
  _check(x[:, ~known], expected_mean, expected_covariance)
  # An unconditional draw of the same pixels is far off: the check can fail (and without the
  # Langevin correction, replacement alone misses the conditional mean by ~25 standard errors).
  marginal_var = np.diag(covariance)[~known]
  assert (np.diag(expected_covariance) < 0.8 * marginal_var).all()


def test_colourisation_samples_the_conditional_given_the_grey_level():
  model, variables, mean, covariance = _target(3)
  matrix = conditional.COLOUR_MATRIX.astype(np.float64)
  # Decoupled coordinates w = per pixel Mᵀ x: its mean and covariance.
  transform = np.kron(np.eye(SIZE * SIZE), matrix.T)
  w_mean, w_covariance = transform @ mean, transform @ covariance @ transform.T
  known = np.tile([True, False, False], SIZE * SIZE)  # the grey axis of each pixel
  y = np.asarray(analytic.sample_target(jax.random.PRNGKey(6), variables, 1))[0]
  grey = np.repeat(y.mean(axis=-1, keepdims=True), 3, axis=-1)  # same grey level as y
  data = np.broadcast_to(grey, (SAMPLES, SIZE, SIZE, 3))
  mask = np.array([1.0, 0.0, 0.0], np.float32)
  result = _sampler(model, 3, "colour").sample(jax.random.PRNGKey(2), variables, data, mask)
  x = np.asarray(result.samples, np.float64).reshape(SAMPLES, -1)
  w = x @ transform.T
  w_grey = (grey.reshape(-1) @ transform.T)[known]
  np.testing.assert_allclose(w[:, known], np.broadcast_to(w_grey, (SAMPLES, known.sum())),
                             atol=1e-5)
  expected_mean, expected_covariance = _conditional(w_mean, w_covariance, known, w_grey)
  _check(w[:, ~known], expected_mean, expected_covariance)


def test_colour_matrix_is_orthogonal_with_the_grey_axis_first():
  m = conditional.COLOUR_MATRIX.astype(np.float64)
  np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-6)
  np.testing.assert_allclose(m[:, 0], np.full(3, 1 / np.sqrt(3)), atol=1e-6)


# --- the modes and their errors -------------------------------------------------------------

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os  # pylint: disable=g-import-not-at-top,wrong-import-position

import controllable  # pylint: disable=g-import-not-at-top,wrong-import-position
import run_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs.analytic import ffhq32  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_named_masks():
  center = controllable.named_mask("center", (16, 16, 1))
  assert center.shape == (16, 16, 1) and center[4:12, 4:12].max() == 0 and center.sum() == 192
  left = controllable.named_mask("left_half", (8, 8, 3))
  assert left[:, :4].max() == 0 and left[:, 4:].min() == 1
  random = controllable.named_mask("random_0.5", (32, 32, 1), seed=3)
  assert 0.4 < random.mean() < 0.6
  np.testing.assert_array_equal(random, controllable.named_mask("random_0.5", (32, 32, 1), 3))


@pytest.mark.parametrize("mask, message", [
    (np.ones((8, 4)), r"has shape \(8, 4, 1\); the images are \(8, 8, 1\)"),
    (np.full((8, 8), 2.0), r"values outside \[0, 1\]"),
    (np.ones((8, 8)), "leaves no pixel unknown"),
    (np.zeros((8, 8)), "leaves no pixel known"),
], ids=["shape", "range", "nothing_unknown", "nothing_known"])
def test_bad_masks_name_the_field(tmp_path, mask, message):
  path = str(tmp_path / "mask.npy")
  np.save(path, mask)
  with pytest.raises(ValueError, match="config.inpaint.mask=.*" + message):
    controllable.named_mask(path, (8, 8, 1))
  with pytest.raises(ValueError, match="neither a pattern"):
    controllable.named_mask("middle", (8, 8, 1))


def test_images_of_another_size_are_refused(tmp_path):
  np.savez(tmp_path / "images.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
  config = digits_ncsnpp.get_config()
  config.inpaint.images = str(tmp_path / "images.npz")
  with pytest.raises(ValueError, match=r"images.npz' holds \(8, 8, 1\) images .* expects "
                     r"\(16, 16, 1\)"):
    controllable.read_images(config, 2)


def test_inpaint_mode_fills_held_out_digits_and_writes_its_grid(tmp_path):
  config = digits_ncsnpp.get_config()
  config.inpaint.num_images = 6
  config.eval.batch_size = 4  # a full batch, then a padded one
  config.sampling.num_steps = 4
  summary = run_lib.inpaint(config, str(tmp_path))
  out = tmp_path / "inpaint"
  with np.load(out / "results.npz") as results:
    originals, inputs, samples = results["originals"], results["inputs"], results["samples"]
  assert samples.shape == (6, 16, 16, 1) and summary["nfe"] == 8
  known = controllable.named_mask("center", (16, 16, 1)) == 1
  np.testing.assert_array_equal(samples[:, known], originals[:, known])  # kept as given
  assert inputs[:, ~known].max() == 0 and (out / "grid.png").is_file()
  assert json.load(open(out / "inpaint.json"))["known_fraction"] == 0.75
  with pytest.raises(ValueError, match="colorize needs colour images"):
    run_lib.colorize(config, str(tmp_path))


def test_colorize_mode_keeps_the_grey_level(tmp_path):
  config = ffhq32.get_config()
  pictures = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  np.savez(tmp_path / "pictures.npz", images=pictures)
  config.inpaint.images = str(tmp_path / "pictures.npz")
  config.inpaint.num_images = 4
  config.eval.batch_size = 4
  config.sampling.num_steps = 3
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.8
  summary = run_lib.colorize(config, str(tmp_path))
  assert summary["tdas"]["enabled"] and os.path.isfile(tmp_path / "colorize" / "grid.png")
  with np.load(tmp_path / "colorize" / "results.npz") as results:
    samples = results["samples"].astype(np.float64)
  grey = pictures.astype(np.float64).mean(-1)
  # uint8 rounding of each channel moves the grey level by at most one step (clipped pixels more).
  inside = (samples.min(-1) > 0) & (samples.max(-1) < 255)
  assert np.abs(samples.mean(-1) - grey)[inside].max() <= 1.0


def test_sigma_methods_count_their_correction_and_refuse_the_ode():
  sampler = _sigma_method("dpmpp_2m_sde", 1)
  assert isinstance(sampler, conditional.ConditionalSigmaSampler)
  assert sampler.nfe == STEPS + (STEPS - 1) and sampler.corrector_steps == 1
  config = get_analytic_config(image_size=SIZE, sigma_max=20)
  config.sampling.method = "ode"
  with pytest.raises(ValueError, match="PC sampler or a σ-schedule method"):
    conditional.build(config, (4, SIZE, SIZE, 3), "pixels")
