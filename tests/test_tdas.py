"""TDAS transforms, filters and coloured noise (docs/numerics.md §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import fft as sfft

from configs.tiny import ncsnpp_ve_continuous
from tdas import files, filters, noise, settings, transforms


def test_dct_is_scipys_orthonormal_dct_and_inverts():
  x = np.random.RandomState(0).randn(2, 8, 6, 3).astype(np.float32)
  coefficients = np.asarray(transforms.dct2(x))
  np.testing.assert_allclose(coefficients, sfft.dctn(x, type=2, axes=(1, 2), norm="ortho"),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(transforms.idct2(coefficients)), x, atol=1e-5)
  np.testing.assert_allclose(np.sum(coefficients ** 2), np.sum(x ** 2), rtol=1e-5)  # orthonormal
  np.testing.assert_allclose(np.asarray(transforms.filter_in_frequency(x, 1.0, "dft")), x,
                             atol=1e-5)


def test_zoned_filter_values_match_the_definition():
  r = filters.frequency_filter((9, 9, 2), r1=0.3, r2=0.6, lambda1=0.9, lambda2=0.5)
  assert r.shape == (9, 9, 2) and r.dtype == np.float32
  assert r[0, 0, 0] == 1.0 and r[8, 8, 1] == 0.5  # radius 0 and the far corner
  rho = np.hypot(*np.meshgrid(np.arange(9), np.arange(9), indexing="ij")) / np.hypot(8, 8)
  expected = np.where(rho <= 0.3, 1.0, np.where(rho <= 0.6, 0.9, 0.5))
  np.testing.assert_allclose(r[..., 0], expected)
  one_zone = filters.frequency_filter((9, 9, 1), 0.5, 0.5, 0.8, 0.8)
  assert set(np.unique(one_zone)) == {np.float32(0.8), np.float32(1.0)}


def test_dft_radius_is_folded():
  rho = filters.normalized_radius(8, 8, "dft")
  np.testing.assert_allclose(rho[7, 0], rho[1, 0])
  np.testing.assert_allclose(rho[4, 4], 1.0)  # the Nyquist corner is the largest radius
  assert rho[0, 0] == 0.0 and rho.max() == 1.0
  r = filters.frequency_filter((8, 8, 1), 0.4, 0.455, 0.955, 0.878, "dft")
  np.testing.assert_array_equal(r, r[::-1][np.r_[7, 0:7]])  # symmetric under i -> H - i


def test_radial_profile_filter_uses_one_value_per_bin():
  profile = np.array([1.0, 0.9, 0.8, 0.7])
  r = filters.radial_profile_filter((16, 16, 3), profile)
  rho = filters.normalized_radius(16, 16)
  bins = np.minimum((rho * 4).astype(int), 3)
  np.testing.assert_allclose(r[..., 2], profile[bins], rtol=1e-6)
  with pytest.raises(ValueError, match="positive"):
    filters.radial_profile_filter((4, 4, 1), [1.0, -0.5])


def test_space_filter_formula_and_range():
  mean = np.random.RandomState(1).uniform(0.1, 0.9, (4, 5, 3))
  a = filters.space_filter(mean, "sqrt", alpha=2.0)
  a0 = np.sqrt(mean) / np.sqrt(mean).max()
  np.testing.assert_allclose(a, (a0 + 1.0) / 2.0, rtol=1e-6)
  assert a.max() == pytest.approx(1.0) and a.min() >= 0.5
  np.testing.assert_allclose(filters.space_filter(mean, "identity"), mean / mean.max(), rtol=1e-6)
  with pytest.raises(ValueError, match="space_f"):
    filters.space_filter(mean, "cube")
  with pytest.raises(ValueError, match="space_alpha"):
    filters.space_filter(mean, "sqrt", alpha=0.5)


def test_identity_filters_leave_the_noise_unchanged():
  eps = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3))
  ones = jnp.ones((8, 8, 3))
  for transform in ("dct", "dft"):
    np.testing.assert_allclose(np.asarray(noise.color(eps, ones, ones, transform)),
                               np.asarray(eps), atol=1e-5)


def _dct_matrix(n):
  return sfft.dct(np.eye(n), type=2, norm="ortho", axis=0)


def test_colored_noise_covariance():
  """Cov(xi) = D⁻¹ diag(R²) D with A = 1, and diag(A²) with R = 1 (4×4×1 images)."""
  h = w = 4
  count = 200000
  key = jax.random.PRNGKey(3)
  freq = filters.frequency_filter((h, w, 1), 0.3, 0.7, 0.6, 1.5)
  xi = np.asarray(noise.colored_noise(key, (count, h, w, 1), None, jnp.asarray(freq)))
  d = np.kron(_dct_matrix(h), _dct_matrix(w))  # acts on row-major flattened (H, W) images
  expected = d.T @ np.diag(freq[..., 0].ravel() ** 2) @ d
  np.testing.assert_allclose(np.cov(xi.reshape(count, -1).T), expected, atol=0.02)

  space = np.linspace(0.3, 1.0, h * w).reshape(h, w, 1).astype(np.float32)
  xi = np.asarray(noise.colored_noise(key, (count, h, w, 1), jnp.asarray(space), None))
  np.testing.assert_allclose(np.cov(xi.reshape(count, -1).T), np.diag(space.ravel() ** 2),
                             atol=0.02)


def test_filter_file_round_trip_and_errors(tmp_path):
  space = np.full((4, 4, 3), 0.5, np.float32)
  freq = filters.frequency_filter((4, 4, 3), 0.4, 0.5, 0.9, 0.8)
  path = str(tmp_path / "filters.npz")
  files.save_filters(path, space, freq, dict(made_by="test", steps=10))
  s, f, info = files.load_filters(path, shape=(4, 4, 3))
  np.testing.assert_array_equal(s, space)
  np.testing.assert_array_equal(f, freq)
  assert info == dict(made_by="test", steps=10)
  with pytest.raises(files.FilterFileError, match=r"data.image_size"):
    files.load_filters(path, shape=(8, 8, 3))
  with pytest.raises(files.FilterFileError, match="does not exist"):
    files.load_filters(str(tmp_path / "nope.npz"))
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(open(path, "rb").read()[:100])
  with pytest.raises(files.FilterFileError, match="not a readable"):
    files.load_filters(str(truncated))
  np.savez(tmp_path / "partial.npz", space=space)
  with pytest.raises(files.FilterFileError, match=r"lacks \['freq', 'info'\]"):
    files.load_filters(str(tmp_path / "partial.npz"))
  # space_alpha = 1 gives 0 where the data's mean is 0 (a digit's border): allowed in space only.
  space[0, 0] = 0.0
  files.save_filters(path, space, freq, {})
  assert files.load_filters(path)[0][0, 0, 0] == 0.0
  for bad_space, bad_freq, what in ((-space, freq, "`space` must be finite and non-negative"),
                                    (space, 0 * freq, "`freq` must be finite and positive")):
    files.save_filters(path, bad_space, bad_freq, {})
    with pytest.raises(files.FilterFileError, match=what):
      files.load_filters(path)


def test_frequency_file_round_trip_and_errors(tmp_path):
  from tdas import stats  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(0).rand(5, 4, 6, 2)
  statistics = stats.ImageStatistics().update(images)
  path = str(tmp_path / "frequency.npz")
  files.save_frequency(path, statistics)
  maps = files.read_frequency(path, "config.eval.frequency_stats_file", (4, 6))
  assert sorted(maps) == ["dct", "dft"]
  np.testing.assert_allclose(maps["dct"], statistics.amplitude("dct"))
  dft = files.read_frequency(path, "config.calibrate.data_stats_file", transform="dft")
  assert list(dft) == ["dft"]
  with pytest.raises(ValueError, match=r"are \(4, 4\)"):
    files.read_frequency(path, "config.eval.frequency_stats_file", (4, 4))
  with pytest.raises(FileNotFoundError, match="config.calibrate.data_stats_file='nope.npz'"):
    files.read_frequency("nope.npz", "config.calibrate.data_stats_file")
  np.savez(tmp_path / "other.npz", dct_amplitude=maps["dct"])
  with pytest.raises(ValueError, match="expected `dft_amplitude`"):
    files.read_frequency(str(tmp_path / "other.npz"), "config.calibrate.data_stats_file",
                         transform="dft")


def test_tdas_settings_resolved_from_config(tmp_path):
  config = ncsnpp_ve_continuous.get_config()
  off = settings.resolve(config)  # TDAS off by default
  assert not off.enabled and off.coloring() is None and off.describe() == dict(enabled=False)
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda2 = 0.7
  space_file = str(tmp_path / "space.npz")
  files.save_space(space_file, np.full((16, 16, 3), 0.4), np.ones((16, 16, 3)), "sqrt", 1.0, 2)
  config.sampling.tdas.space_file = space_file
  tdas = settings.resolve(config)
  assert tdas.freq.shape == (16, 16, 3) and tdas.freq.min() == pytest.approx(0.7)
  np.testing.assert_allclose(tdas.space, 1.0)  # a constant mean image gives A = 1
  coloring = tdas.coloring()
  assert (coloring.transform, coloring.apply_to) == ("dct", "both")
  assert coloring.colors("init") and coloring.colors("step")
  described = tdas.describe()
  assert described["lambda2"] == 0.7 and described["space_f"] == "sqrt"
  assert described["space_file"] == space_file and described["frequency_filter"]
  assert not tdas.without_filters().enabled
  config.sampling.tdas.use_frequency = False
  config.sampling.tdas.use_space = False
  tdas = settings.resolve(config)
  assert tdas.enabled and tdas.space is None and tdas.freq is None
  config.sampling.tdas.transform = "wavelet"
  with pytest.raises(ValueError, match="config.sampling.tdas.transform"):
    settings.resolve(config)


def test_calibration_target_keeps_transform_and_space_but_reads_no_filter_file(tmp_path):
  config = ncsnpp_ve_continuous.get_config()  # TDAS off: calibration still fits for its settings
  space_file = str(tmp_path / "space.npz")
  mean = np.random.RandomState(1).uniform(0.1, 0.9, (16, 16, 3))
  files.save_space(space_file, mean, np.ones((16, 16, 3)), "sqrt", 2.0, 2)
  config.sampling.tdas.space_file = space_file
  config.sampling.tdas.space_alpha = 2.0
  config.sampling.tdas.transform = "dft"
  config.sampling.tdas.filter_file = str(tmp_path / "not_made_yet.npz")
  target = settings.for_calibration(config)
  assert target.transform == "dft" and target.freq is None
  np.testing.assert_allclose(target.space, filters.space_filter(mean, "sqrt", 2.0), rtol=1e-6)
  assert not config.sampling.tdas.enabled  # the config itself is unchanged
