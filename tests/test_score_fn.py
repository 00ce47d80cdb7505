"""Score-function label conventions (docs/numerics.md §3) for every SDE / continuity combination."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from models import utils as model_utils


class LabelEcho(nn.Module):
  """A stand-in network whose output is its label at every pixel (and which checks `train`)."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    assert train is False
    self.sow("intermediates", "labels", labels)
    return jnp.ones_like(x) * labels.astype(jnp.float32).reshape(-1, 1, 1, 1)


T_VALUES = np.array([1e-3, 0.25, 0.5, 0.999, 1.0], np.float32)


def _score(sde, continuous, num_scales=None):
  score_fn = model_utils.get_score_fn(sde, LabelEcho(), {}, continuous, num_scales=num_scales)
  x = jnp.zeros((len(T_VALUES), 2, 2, 1))
  score = np.asarray(score_fn(x, jnp.asarray(T_VALUES)))
  assert score.shape == x.shape
  return score[:, 0, 0, 0].astype(np.float64)


def test_ve_continuous_feeds_sigma_and_returns_output():
  sde = sde_lib.VESDE(0.01, 50.0, N=1000)
  np.testing.assert_allclose(_score(sde, True), 0.01 * 5000.0 ** T_VALUES, rtol=1e-5)


def test_ve_discrete_feeds_the_index_from_sigma_max_down():
  # A network trained with 1000 noise levels, sampled with an accelerated 100-step SDE: the labels
  # still index the network's own 1000 sigmas.
  sde = sde_lib.VESDE(0.01, 50.0, N=100)
  expected = np.round((1.0 - T_VALUES.astype(np.float64)) * 999)
  np.testing.assert_array_equal(_score(sde, False, num_scales=1000), expected)
  sigmas = model_utils.get_sigmas(_ve_config(1000))
  np.testing.assert_allclose(sigmas[expected.astype(int)], 0.01 * 5000.0 ** T_VALUES, rtol=5e-3)  # half a grid step


def _ve_config(num_scales):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(model=dict(sigma_min=0.01, sigma_max=50.0,
                                                   num_scales=num_scales)))


@pytest.mark.parametrize("sde_cls", [sde_lib.VPSDE, sde_lib.subVPSDE])
def test_vp_and_subvp_continuous_feed_999t_and_divide_by_minus_std(sde_cls):
  sde = sde_cls(0.1, 20.0, N=1000)
  t = T_VALUES.astype(np.float64)
  integral_beta = 0.1 * t + 0.5 * 19.9 * t ** 2
  std = (np.sqrt(1 - np.exp(-integral_beta)) if sde_cls is sde_lib.VPSDE
         else 1 - np.exp(-integral_beta))
  np.testing.assert_allclose(_score(sde, True), -999 * t / std, rtol=2e-3)


def test_vp_discrete_feeds_t_times_n_minus_1_and_divides_by_ddpm_std():
  sde = sde_lib.VPSDE(0.1, 20.0, N=50)  # accelerated sampler; the network knows 1000 steps
  t = T_VALUES.astype(np.float64)
  labels = t * 999
  alphas_cumprod = np.cumprod(1 - np.linspace(0.1 / 1000, 20.0 / 1000, 1000))
  std = np.sqrt(1 - alphas_cumprod[labels.astype(np.float32).astype(int)])
  np.testing.assert_allclose(_score(sde, False, num_scales=1000), -labels / std, rtol=1e-4)


def test_subvp_discrete_is_refused():
  with pytest.raises(ValueError, match="continuous=False"):
    model_utils.get_score_fn(sde_lib.subVPSDE(0.1, 20.0, 1000), LabelEcho(), {}, False)


class IndexOnlyEcho(LabelEcho):
  discrete_labels_only = True


def test_networks_with_a_noise_table_always_get_indices():
  # ve/ncsnv2/bedroom.py says training.continuous=True (a misspelt field in the release), but
  # NCSNv2 can only index its sigmas: the score function must feed indices regardless.
  from configs.ve.ncsnv2 import bedroom  # pylint: disable=g-import-not-at-top
  config = bedroom.get_config()
  assert config.training.continuous and not model_utils.uses_continuous_labels(config)
  sde = sde_lib.VESDE(0.01, 50.0, N=1000)
  score_fn = model_utils.get_score_fn(sde, IndexOnlyEcho(), {}, continuous=True)
  score = np.asarray(score_fn(jnp.zeros((len(T_VALUES), 1, 1, 1)), jnp.asarray(T_VALUES)))
  np.testing.assert_array_equal(score[:, 0, 0, 0], np.round((1.0 - T_VALUES) * 999))
