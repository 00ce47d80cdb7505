"""Frequency statistics, the filter fits, presets, data-set readers and the analytic target file.

No sampler runs here (that is tests/test_calibrate.py): everything is numpy on small arrays.
"""
import os

import ml_collections
import numpy as np
import pytest

import datasets
from configs.analytic import get_analytic_config
from models import analytic
from tdas import calibration, files, filters, presets, settings, stats


def _dct_basis(height, width, k, l):
  """The (k, l) DCT-II basis image (H, W): one coefficient of the orthonormal DCT."""
  h, w = np.arange(height)[:, None], np.arange(width)[None, :]
  return (np.cos(np.pi * (2 * h + 1) * k / (2 * height))
          * np.cos(np.pi * (2 * w + 1) * l / (2 * width)))


# ---------------------------------------------------------------------------------------------
# Statistics of known inputs.


def test_a_single_cosine_has_one_dct_peak():
  image = _dct_basis(16, 12, 3, 5)
  images = np.stack([image * a for a in (1.0, -2.0, 0.5)])[..., None].repeat(2, axis=3)
  amplitude = stats.mean_amplitude(images, "dct")
  assert amplitude.shape == (16, 12)
  peak = np.unravel_index(np.argmax(amplitude), amplitude.shape)
  assert peak == (3, 5)
  others = amplitude.copy()
  others[3, 5] = 0
  assert others.max() < 1e-10 * amplitude[3, 5]
  # Orthonormal: the coefficient is the image's norm, here mean |a| · ||basis||.
  np.testing.assert_allclose(amplitude[3, 5], np.mean([1.0, 2.0, 0.5]) * np.linalg.norm(image))


def test_white_noise_is_flat_in_both_transforms():
  rng = np.random.RandomState(0)
  noise = rng.randn(400, 16, 16, 3)
  dct = stats.mean_amplitude(noise, "dct")
  # Every orthonormal DCT coefficient of white noise is N(0, 1): E|c| = sqrt(2 / pi).
  np.testing.assert_allclose(dct, np.sqrt(2 / np.pi), rtol=0.08)
  np.testing.assert_allclose(dct.mean(), np.sqrt(2 / np.pi), rtol=0.01)
  dft = stats.mean_amplitude(noise, "dft")
  # DFT coefficients are complex with E|c|² = 1 (E|c| = sqrt(pi) / 2), except the four real
  # self-conjugate ones (zero and Nyquist frequencies).
  real = np.zeros((16, 16), bool)
  real[np.ix_([0, 8], [0, 8])] = True
  np.testing.assert_allclose(dft[~real], np.sqrt(np.pi) / 2, rtol=0.08)
  np.testing.assert_allclose(dft[real], np.sqrt(2 / np.pi), rtol=0.15)
  _, profile = stats.radial_profile(dct, 8, "dct")
  np.testing.assert_allclose(profile, np.sqrt(2 / np.pi), rtol=0.03)


def test_a_constant_image_is_dc_only():
  images = np.full((3, 8, 10, 3), 0.25)
  for transform in ("dct", "dft"):
    amplitude = stats.mean_amplitude(images, transform)
    np.testing.assert_allclose(amplitude[0, 0], 0.25 * np.sqrt(80))
    rest = amplitude.copy()
    rest[0, 0] = 0
    assert rest.max() < 1e-12
  # Dev of two constant sets: defined at DC only, NaN where the reference has no amplitude.
  reference = stats.mean_amplitude(images, "dct")
  deviation = stats.deviation_ratio(2 * reference, reference)
  assert deviation[0, 0] == pytest.approx(2.0)
  assert np.isnan(deviation[1:]).all() and np.isnan(deviation[0, 1:]).all()


def test_streamed_statistics_equal_one_pass_in_any_batching():
  rng = np.random.RandomState(1)
  images = rng.rand(23, 8, 8, 3)
  whole = stats.ImageStatistics().update(images)
  streamed = stats.image_statistics(np.array_split(images, [1, 2, 10, 17]))
  merged = stats.ImageStatistics().merge(stats.ImageStatistics(chunk=4).update(images[:5]))
  merged.merge(stats.ImageStatistics.from_state(stats.ImageStatistics().update(images[5:]).state()))
  for other in (streamed, merged):
    assert other.count == whole.count == 23
    np.testing.assert_allclose(other.mean_image(), images.mean(axis=0))
    for transform in ("dct", "dft"):
      np.testing.assert_allclose(other.amplitude(transform), whole.amplitude(transform))
  per_channel = whole.amplitude("dct", average_channels=False)
  assert per_channel.shape == (8, 8, 3)
  np.testing.assert_allclose(per_channel.mean(axis=2), stats.mean_amplitude(images, "dct"))
  with pytest.raises(ValueError, match="does not match"):
    whole.update(np.zeros((2, 8, 9, 3)))
  with pytest.raises(ValueError, match="empty"):
    stats.ImageStatistics().amplitude("dct")


def test_radial_profile_counts_and_nan():
  rho = filters.normalized_radius(32, 32, "dct")
  centres, means, counts = stats.radial_profile(rho, 8, return_counts=True)
  assert counts.sum() == 32 * 32
  assert np.all(np.abs(means - centres) < 1 / 16 + 1e-12)  # the mean rho lies in its bin
  values = np.ones((32, 32))
  values[0, 0] = np.nan
  assert stats.radial_profile(values, 8)[1][0] == 1.0  # NaN coordinates are skipped
  _, sparse = stats.radial_profile(np.ones((2, 2)), 16)
  assert np.isnan(sparse).any()  # bins without coordinates


def test_behaviour_function_shows_how_a_model_scales_each_band():
  data = 1.0 / (1.0 + filters.normalized_radius(32, 32) * 10)
  gain = filters.frequency_filter((32, 32, 1), 0.5, 0.5, 1.5, 1.5)[..., 0]
  centres, behaviour = stats.behaviour_function(data * gain, data, 4)
  np.testing.assert_allclose(behaviour[:2], 1.0)
  np.testing.assert_allclose(behaviour[2:], 1.5)
  with pytest.raises(ValueError, match="differ in shape"):
    stats.deviation_ratio(np.ones((4, 4)), np.ones((4, 5)))


# ---------------------------------------------------------------------------------------------
# Fits.


@pytest.mark.parametrize("transform", ["dct", "dft"])
@pytest.mark.parametrize("r1, r2, lambda1, lambda2", [
    (0.31, 0.57, 0.85, 0.7),     # VE-like: suppress high frequencies
    (0.22, 0.66, 1.2, 1.45),     # DDPM-like: amplify them (lambda > 1)
])
def test_least_squares_fit_recovers_the_zones(transform, r1, r2, lambda1, lambda2):
  num_bins = 16
  zoned = filters.frequency_filter((64, 64, 1), r1, r2, lambda1, lambda2, transform)[..., 0]
  noise = np.exp(0.03 * np.random.RandomState(2).randn(64, 64))
  for deviation in (1.0 / zoned, noise / zoned):
    fit = calibration.fit_zoned_filter(deviation, transform)
    assert abs(fit["r1"] - r1) <= 1 / num_bins and abs(fit["r2"] - r2) <= 1 / num_bins, fit
    assert fit["lambda1"] == pytest.approx(lambda1, rel=0.01)
    assert fit["lambda2"] == pytest.approx(lambda2, rel=0.01)
  result = calibration.calibrate_frequency_filter(
      np.ones((64, 64)), 1.0 / zoned, 3, transform, "zones", num_bins)
  assert result["freq"].shape == (64, 64, 3)
  # The same filter, but for the few coordinates between the true and the fitted radii.
  assert np.mean(np.abs(result["freq"][..., 1] / zoned - 1) > 0.01) < 0.01
  gains = calibration.fit_radial_gains(1.0 / zoned, num_bins, transform)
  centres = (np.arange(num_bins) + 0.5) / num_bins
  pure = (np.abs(centres - r1) > 1 / num_bins) & (np.abs(centres - r2) > 1 / num_bins)
  expected = np.where(centres <= r1, 1.0, np.where(centres <= r2, lambda1, lambda2))
  np.testing.assert_allclose(gains[pure], expected[pure], rtol=1e-5)


def test_identity_deviation_gives_identity_filters():
  fit = calibration.fit_zoned_filter(np.ones((32, 32)))
  assert fit["lambda1"] == pytest.approx(1.0) and fit["lambda2"] == pytest.approx(1.0)
  for method in calibration.METHODS:
    result = calibration.calibrate_frequency_filter(np.ones((32, 32)), np.ones((32, 32)), 1,
                                                    "dct", method)
    np.testing.assert_allclose(result["freq"], 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="calibrate.method"):
    calibration.check_method("median")
  with pytest.raises(ValueError, match="no finite positive"):
    calibration.fit_zoned_filter(np.full((8, 8), np.nan))


def test_quantile_rule_reproduces_the_papers_dft_radii():
  """Table 4: r1 / r2 = 0.400 / 0.455 at 32 px (CIFAR-10) and 0.398 / 0.456 at 64 px (CelebA)."""
  for size, preset in ((32, "cifar10_100_dft"), (64, "celeba_132_dft")):
    fit = calibration.fit_quantile_filter(np.full((size, size), 1.25), "dft")
    assert round(fit["r1"], 3) == presets.get_preset(preset).r1
    assert round(fit["r2"], 3) == presets.get_preset(preset).r2
    assert fit["lambda1"] == pytest.approx(0.8) and fit["lambda2"] == pytest.approx(0.8)
  with pytest.raises(ValueError, match="quantiles"):
    calibration.fit_quantile_filter(np.ones((8, 8)), "dct", (0.5, 0.2))


# ---------------------------------------------------------------------------------------------
# Presets.


def _tdas_config(**tdas):
  config = get_analytic_config(image_size=32, sigma_max=50)
  config.sampling.tdas.enabled = True
  config.sampling.tdas.use_space = False
  config.sampling.tdas.update(tdas)
  return config


def test_every_preset_resolves_to_a_valid_filter():
  assert len(presets.PRESETS) == 13
  for name, preset in presets.PRESETS.items():
    config = _tdas_config(preset=name)
    resolved = settings.effective_fields(config)
    assert resolved.transform == preset.transform and resolved.lambda2 == preset.lambda2
    built = settings.resolve(config)
    assert built.freq.shape == (32, 32, 3) and built.freq.min() == pytest.approx(
        preset.lambda2, rel=1e-6)
    assert built.describe()["preset"] == name
  ffhq = presets.get_preset("ffhq_100_dft")
  assert (ffhq.lambda1, ffhq.lambda2, ffhq.r1, ffhq.r2) == (0.955, 0.878, 0.400, 0.455)
  church = presets.get_preset("lsun_church_400_dct")
  assert (church.transform, church.lambda1, church.r2) == ("dct", 0.591, 0.862)
  assert "| `cifar10_50_dft` | CIFAR-10 | 32 | 50 | DFT | 0.892 | 0.798 |" in (
      presets.markdown_table())


def test_a_preset_sets_the_samplers_transform():
  config = _tdas_config(preset="cifar10_200_dft")
  assert config.sampling.tdas.transform == "dct"  # the config itself is not changed
  tdas = settings.resolve(config)
  assert tdas.transform == tdas.coloring().transform == "dft"
  assert tdas.describe()["transform"] == "dft"


def test_unknown_preset_and_conflicts_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="not a known TDAS preset.*cifar10_200_dft"):
    settings.resolve(_tdas_config(preset="cifar10_300_dft"))
  with pytest.raises(ValueError, match="clear one of them"):
    settings.resolve(_tdas_config(preset="ffhq_100_dft", filter_file="f.npz"))
  # A filter file made for the DFT refuses a DCT sampler.
  path = str(tmp_path / "dft.npz")
  files.save_filters(path, np.ones((32, 32, 3)), np.ones((32, 32, 3)), dict(transform="dft"))
  config = _tdas_config(filter_file=path)
  with pytest.raises(ValueError, match="DFT frequency filter"):
    settings.resolve(config)


# ---------------------------------------------------------------------------------------------
# Data-set readers.


def _write_pngs(folder, images):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(folder / "nested", exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / ("nested" if i % 2 else "") / f"{i:02d}.png")


def test_image_folder_and_npz_readers(tmp_path):
  rng = np.random.RandomState(3)
  images = (rng.rand(5, 8, 8, 3) * 255).astype(np.uint8)
  _write_pngs(tmp_path / "folder", images)
  read = datasets.read_image_folder(str(tmp_path / "folder"), 8, 3)
  assert read.shape == (5, 8, 8, 3) and read.dtype == np.uint8
  # Sorted path order: 00, 02, 04 at the top, then nested/01, nested/03.
  np.testing.assert_array_equal(read, images[[0, 2, 4, 1, 3]])
  grey = datasets.read_image_folder(str(tmp_path / "folder"), 8, 1)
  assert grey.shape == (5, 8, 8, 1)
  np.savez(tmp_path / "data.npz", images=images)
  batches = list(datasets.iterate_images(str(tmp_path / "data.npz"), 8, 3, batch_size=2))
  assert [b.shape[0] for b in batches] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate(batches), images)
  np.testing.assert_array_equal(datasets.read_npz_images(str(tmp_path / "data.npz")), images)


def test_data_set_errors_name_the_path(tmp_path):
  def first(path, size=8, channels=3):
    return next(datasets.iterate_images(str(path), size, channels))

  with pytest.raises(datasets.DatasetError, match="config.data.path is empty"):
    first("")
  with pytest.raises(datasets.DatasetError, match="missing.*does not exist"):
    first(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(datasets.DatasetError, match="empty.*no PNG or JPEG"):
    first(tmp_path / "empty")
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "a.png").write_bytes(b"not an image")
  with pytest.raises(datasets.DatasetError, match="Cannot read image file.*a.png"):
    first(tmp_path / "broken")
  _write_pngs(tmp_path / "folder", np.zeros((1, 8, 6, 3), np.uint8))
  with pytest.raises(datasets.DatasetError, match="00.png.*6x8 px.*8x8"):
    first(tmp_path / "folder")
  np.savez(tmp_path / "small.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(datasets.DatasetError, match="small.npz.*image_size"):
    first(tmp_path / "small.npz")
  np.savez(tmp_path / "floats.npz", images=np.zeros((2, 8, 8, 3)))
  with pytest.raises(datasets.DatasetError, match="floats.npz.*uint8"):
    first(tmp_path / "floats.npz")
  np.savez(tmp_path / "other.npz", x=np.zeros(1))
  with pytest.raises(datasets.DatasetError, match="other.npz.*no `images`"):
    first(tmp_path / "other.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(datasets.DatasetError, match="junk.npz.*not a readable"):
    first(tmp_path / "junk.npz")
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(datasets.DatasetError, match="file.txt.*neither"):
    first(tmp_path / "file.txt")


# ---------------------------------------------------------------------------------------------
# The analytic target from a file.


def test_analytic_target_file_and_streamed_fit(tmp_path):
  rng = np.random.RandomState(4)
  images = rng.rand(12, 8, 8, 3)
  mean, variance = analytic.fit_target(images)
  streamed = analytic.fit_target(lambda: iter(np.array_split(images, 5)))
  np.testing.assert_allclose(streamed[0], mean, rtol=1e-6)
  np.testing.assert_allclose(streamed[1], variance, rtol=1e-5)
  path = str(tmp_path / "target.npz")
  np.savez(path, mean=mean, dct_variance=variance)
  config = get_analytic_config(image_size=8, sigma_max=10)
  config.model.target_file = path
  target = analytic.target_variables(config)["target"]
  np.testing.assert_array_equal(np.asarray(target["mean"]), mean)
  np.testing.assert_array_equal(np.asarray(target["dct_variance"]), variance)
  config.data.image_size = 16
  with pytest.raises(ValueError, match="target.npz.*shape"):
    analytic.target_variables(config)
  config.model.target_file = str(tmp_path / "none.npz")
  with pytest.raises(FileNotFoundError, match="none.npz"):
    analytic.target_variables(config)
  # A config without the field (not an analytic config) still gets the power-law target.
  bare = ml_collections.ConfigDict(get_analytic_config(image_size=8, sigma_max=10).to_dict())
  del bare.model["target_file"]
  assert analytic.target_variables(bare)["target"]["mean"].shape == (8, 8, 3)
