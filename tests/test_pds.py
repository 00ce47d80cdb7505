"""PDS (Preconditioned Diffusion Sampling): its drift operator, its masks, its speed-up rule, and
its PC sampler reproduced (against a float64 transcription of docs/pds.md §2)."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from configs.analytic import get_analytic_config
from sampling import factory, pc
from sampling.interface import SamplerSetup
from tdas import files, filters, settings
from tdas.noise import Coloring
from tdas.settings import TDAS

VAR = 0.3 ** 2
SHAPE = (6, 8, 8, 3)


def _masks(seed=0):
  rng = np.random.RandomState(seed)
  images = rng.rand(20, 8, 8, 3)
  space_raw, freq_raw = filters.pds_statistics(images)
  return filters.pds_filter(space_raw, 5.0), filters.pds_filter(freq_raw, 5.0)


def test_masks_follow_pds_recipe_and_round_trip_channels_first(tmp_path):
  space_raw, freq_raw = filters.pds_statistics(np.random.RandomState(1).rand(10, 8, 8, 3))
  mask = filters.pds_filter(freq_raw, 5.0)
  assert mask.min() == pytest.approx(1.0) and mask.max() <= 1.25 + 1e-6
  assert np.unravel_index(mask.argmin(), mask.shape)[:2] == (0, 0)  # the DC term is largest
  path = str(tmp_path / "freq.npy")
  files.save_pds_mask(path, freq_raw)
  assert np.load(path).shape == (3, 8, 8)  # channels first, as PDS writes them
  np.testing.assert_allclose(files.read_pds_mask(path, "f", (8, 8, 3)), freq_raw, rtol=1e-6)
  with pytest.raises(ValueError, match=r"need \(3, 16, 16\)"):
    files.read_pds_mask(path, "config.sampling.tdas.pds_freq_mask", (16, 16, 3))
  with pytest.raises(ValueError, match="pds_alpha must be > 1"):
    filters.pds_filter(freq_raw, 1.0)


@pytest.mark.parametrize("transform", ["dct", "dft"])
def test_the_drift_operator_is_m_m_transpose(transform):
  space, freq = _masks()
  coloring = Coloring(space=jnp.asarray(space), freq=jnp.asarray(freq), transform=transform,
                      precondition=True)
  v = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  m_transpose_v = jax.vjp(coloring, jnp.zeros_like(v))[1](v)[0]
  np.testing.assert_allclose(np.asarray(coloring.precondition_drift(v)),
                             np.asarray(coloring(m_transpose_v)), rtol=1e-4, atol=1e-5)
  off = Coloring(space=jnp.asarray(space), freq=jnp.asarray(freq), transform=transform)
  np.testing.assert_array_equal(np.asarray(off.precondition_drift(v)), np.asarray(v))


def _pds_reference(sigmas_grid, sigma_min, sigma_max, eps, snr, space, freq, rng, num_steps):
  """docs/pds.md §2 for VE in float64 numpy, on the draws normal(fold_in(rng, c))."""
  def dft(v):
    return np.fft.fft2(v, axes=(1, 2))

  def idft(v):
    return np.fft.ifft2(v, axes=(1, 2))

  def m_op(z):
    return np.real(idft(dft(z * space) * freq))

  def d_op(v):
    return np.real(idft(freq * dft(space ** 2 * idft(freq * dft(v)))))

  def score(x, t):
    sigma = sigma_min * (sigma_max / sigma_min) ** t
    return -x / (VAR + sigma ** 2)

  def draw(c):
    return np.asarray(jax.random.normal(jax.random.fold_in(rng, c), SHAPE), np.float64)

  def norm(v):
    return np.mean(np.linalg.norm(v.reshape(v.shape[0], -1), axis=1))

  timesteps = np.linspace(1.0, eps, num_steps)
  x = sigma_max * m_op(draw(0))
  c = 1
  for i in range(num_steps):
    t = timesteps[i]
    g = d_op(score(x, t))  # Langevin corrector
    xi = m_op(draw(c))
    c += 1
    step = 2.0 * (snr * norm(xi) / norm(g)) ** 2
    x = x + step * g + np.sqrt(2 * step) * xi
    k = int(np.float32(t) * np.float32(num_steps - 1))  # reverse-diffusion predictor
    g2 = sigmas_grid[k] ** 2 - (sigmas_grid[k - 1] ** 2 if k > 0 else 0.0)
    x_mean = x - d_op(-g2 * score(x, t))
    x = x_mean + np.sqrt(g2) * m_op(draw(c))
    c += 1
  return x_mean


def test_pc_with_preconditioned_drift_reproduces_pds():
  sde = sde_lib.VESDE(0.01, 50.0, N=12)

  def builder(variables):
    def score_fn(x, t):
      return -x / (VAR + sde.marginal_prob(x, t)[1].reshape(-1, 1, 1, 1) ** 2)
    return score_fn

  sampler = pc.PCSampler(SamplerSetup(sde=sde, score_fn_builder=builder, shape=SHAPE, eps=1e-5),
                         snr=0.16)
  space, freq = _masks(3)
  tdas = TDAS.from_arrays(space=space, freq=freq, transform="dft", precondition_drift=True)
  rng = jax.random.PRNGKey(5)
  ours = np.asarray(sampler.sample(rng, {}, tdas).samples, np.float64)
  expected = _pds_reference(np.asarray(sde.discrete_sigmas, np.float64), 0.01, 50.0, 1e-5, 0.16,
                            space.astype(np.float64), freq.astype(np.float64), rng, 12)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # Without the drift preconditioning it is TDAS, which differs.
  plain = np.asarray(sampler.sample(rng, {}, TDAS.from_arrays(space=space, freq=freq,
                                                               transform="dft")).samples)
  assert np.abs(plain - ours).max() > 1e-3


def test_pds_settings_from_the_config(tmp_path):
  config = get_analytic_config(8, 50)
  space_raw, freq_raw = filters.pds_statistics(np.random.RandomState(2).rand(10, 8, 8, 3))
  files.save_pds_mask(str(tmp_path / "s.npy"), space_raw)
  files.save_pds_mask(str(tmp_path / "f.npy"), freq_raw)
  config.sampling.tdas.update(dict(enabled=True, transform="dft", precondition_drift=True,
                                   pds_space_mask=str(tmp_path / "s.npy"),
                                   pds_freq_mask=str(tmp_path / "f.npy")))
  tdas = settings.resolve(config)
  np.testing.assert_allclose(tdas.freq, filters.pds_filter(freq_raw, 5.0), rtol=1e-6)
  assert tdas.coloring().precondition and tdas.describe()["pds_alpha"] == 5.0
  config.sampling.tdas.transform = "dct"
  with pytest.raises(ValueError, match="transform='dft'"):
    settings.resolve(config)
  # PDS's speed-up rule: N = int(N / k) (2000 / 30 -> 66 steps, where rounding gives 67).
  config.model.num_scales, config.sampling.num_steps, config.sampling.speedup = 2000, 0, 30.0
  assert factory.sampling_steps(config)[0] == 67
  config.sampling.speedup_rule = "truncate"
  assert factory.sampling_steps(config)[0] == 66


def test_the_mask_tool_writes_pds_files_from_a_data_set(tmp_path):
  from tools import pds_masks  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(4).randint(0, 256, (12, 8, 8, 3)).astype(np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  space_path, freq_path = pds_masks.write_masks(str(tmp_path / "data.npz"), 8, 3, 10,
                                                str(tmp_path / "out"))
  space, freq = filters.pds_statistics(images[:10] / 255.0)
  np.testing.assert_allclose(files.read_pds_mask(space_path, "s", (8, 8, 3)), space, rtol=1e-6)
  np.testing.assert_allclose(files.read_pds_mask(freq_path, "f", (8, 8, 3)), freq, rtol=1e-6)


def test_calibrate_mode_makes_pds_masks_from_the_data_without_sampling(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import run_lib  # pylint: disable=g-import-not-at-top
  images = np.random.RandomState(6).randint(0, 256, (14, 8, 8, 3)).astype(np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  config = get_analytic_config(8, 50)
  config.data.path = str(tmp_path / "data.npz")
  config.calibrate.update(dict(method="pds", num_samples=10))
  summary = run_lib.calibrate(config, str(tmp_path / "work"))  # no checkpoint: nothing is sampled
  out = tmp_path / "work" / "calibration"
  space, freq = filters.pds_statistics(images[:10] / 255.0)
  np.testing.assert_allclose(files.read_pds_mask(str(out / "pds_space.npy"), "s", (8, 8, 3)),
                             space, rtol=1e-6)
  np.testing.assert_allclose(files.read_pds_mask(str(out / "pds_freq.npy"), "f", (8, 8, 3)),
                             freq, rtol=1e-6)
  assert json.loads((out / "calibration_pds.json").read_text())["num_images"] == 10
  assert summary["filter_range"]["freq"][0] == pytest.approx(1.0)
  assert (out / "pds_masks.png").stat().st_size > 0
  # The flags it prints are the ones the sampler reads.
  assert summary["sample_flags"][0] == "--tdas"
  for flag in summary["sample_flags"][1:]:
    dotted, value = flag[len("--config."):].split("=")
    section, field = dotted.rsplit(".", 1)
    target = config
    for name in section.split("."):
      target = target[name]
    target[field] = value == "True" if value in ("True", "False") else value
  with mock.patch.object(settings.logging, "warning") as warning:  # masks set, TDAS off: said
    assert not settings.resolve(config).enabled
  assert "pass --tdas" in warning.call_args[0][0]
  config.sampling.tdas.enabled = True
  tdas = settings.resolve(config)
  np.testing.assert_allclose(tdas.freq, filters.pds_filter(freq, 5.0), rtol=1e-6)
  assert tdas.coloring().precondition
  config.data.path = str(tmp_path / "missing.npz")
  with pytest.raises(Exception, match="missing.npz"):
    run_lib.calibrate(config, str(tmp_path / "work2"))
  config.calibrate.method = "pdss"
  with pytest.raises(ValueError, match=r"calibrate.method='pdss' must be one of .*'pds'"):
    run_lib.calibrate(config, str(tmp_path / "work3"))
