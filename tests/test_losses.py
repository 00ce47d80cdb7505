"""Training losses, optimiser and EMA (losses.py) on stand-in networks: small arrays, no U-Net.

- The exact score of a point mass (the data x0 known to the network) has zero loss under every
  objective; a network that outputs zero has the loss the formulas predict.
- Each loss equals a direct float64 computation from docs/numerics.md §2-3 on a tiny learned network.
- `get_optimizer` equals a hand-written Adam with warm-up and clipping; `ema_update` its formula.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import losses
import sde_lib
from configs.tiny import (ddpm_vp_discrete, ddpmpp_vp_continuous, ncsnpp_ve_continuous,
                          ncsnpp_ve_discrete, subvp_ddpmpp_continuous)
from models import utils as model_utils

B, H, W, C = 6, 4, 4, 2
X0 = np.random.default_rng(0).uniform(-1, 1, (B, H, W, C)).astype(np.float32)
Z = np.random.default_rng(1).standard_normal((B, H, W, C)).astype(np.float32)
T = np.array([1e-5, 0.01, 0.2, 0.5, 0.9, 1.0], np.float32)
LABELS = np.array([0, 1, 17, 50, 98, 99], np.int32)
N = 100
SDES = {
    "ve": sde_lib.VESDE(0.01, 50.0, N=N),
    "vp": sde_lib.VPSDE(0.1, 20.0, N=N),
    "subvp": sde_lib.subVPSDE(0.1, 20.0, N=N),
}


class ExactPointMassScore(nn.Module):
  """Outputs what the network of each convention must output for the exact score of x_t given
  the data x0 (a constant here), i.e. for a point mass at x0."""
  kind: str
  x0: np.ndarray

  @nn.compact
  def __call__(self, x, labels, train=False):
    self.param("unused", nn.initializers.zeros, (1,))
    x0 = jnp.asarray(self.x0)

    def per_sample(v):
      return v.reshape(-1, 1, 1, 1)

    if self.kind == "ve":  # labels = sigma(t); output = score
      return -(x - x0) / per_sample(labels ** 2)
    if self.kind in ("vp", "subvp"):  # labels = 999 t; score = -output / std
      mean, std = SDES[self.kind].marginal_prob(x0, labels / 999.0)
      return (x - mean) / per_sample(std)
    if self.kind == "smld":  # int labels into sigmas from sigma_max down; output = score
      sigma = losses.smld_sigmas(SDES["ve"])[labels]
      return -(x - x0) / per_sample(sigma ** 2)
    if self.kind == "ddpm":  # int labels = DDPM step; output = predicted noise
      vp = SDES["vp"]
      return (x - per_sample(vp.sqrt_alphas_cumprod[labels]) * x0) / per_sample(
          vp.sqrt_1m_alphas_cumprod[labels])
    raise ValueError(self.kind)


class Zero(nn.Module):

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.zeros_like(x) * self.param("unused", nn.initializers.zeros, (1,))


class TinyNet(nn.Module):
  """A tiny learned network: one 3x3 convolution plus a label-dependent bias, and dropout."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    h = nn.Conv(x.shape[-1], (3, 3))(x)
    bias = nn.Dense(x.shape[-1])(jnp.log1p(jnp.abs(labels.astype(jnp.float32)))[:, None])
    return nn.Dropout(0.5, deterministic=not train)(h + bias[:, None, None, :])


def _variables(module, labels):
  return module.init(jax.random.PRNGKey(0), jnp.asarray(X0[:len(labels)]), jnp.asarray(labels))


def _continuous_terms(kind, module, reduce_mean, weighting, t=T, z=Z):
  variables = _variables(module, t)
  return np.asarray(losses.dsm_terms(SDES[kind], module, variables, jnp.asarray(X0),
                                     jnp.asarray(t), jnp.asarray(z), train=False,
                                     reduce_mean=reduce_mean, likelihood_weighting=weighting))


@pytest.mark.parametrize("kind", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("weighting", [True, False])
def test_exact_score_has_zero_continuous_loss(kind, reduce_mean, weighting):
  terms = _continuous_terms(kind, ExactPointMassScore(kind, X0), reduce_mean, weighting)
  assert terms.shape == (B,)
  zero_network = _continuous_terms(kind, Zero(), reduce_mean, weighting)
  # float32 leaves ~1e-4 of the zero network's loss where subVP's std is ~1e-6 (t = 1e-5).
  assert np.all(terms <= 1e-3 * np.maximum(zero_network, 1.0)), terms
  assert np.all(terms[1:] <= 1e-6 * np.maximum(zero_network[1:], 1.0)), terms


@pytest.mark.parametrize("kind, terms_fn, sde", [
    ("smld", losses.smld_terms, "ve"), ("ddpm", losses.ddpm_terms, "vp")])
def test_exact_score_has_zero_discrete_loss(kind, terms_fn, sde):
  for reduce_mean in (True, False):
    terms = terms_fn(SDES[sde], ExactPointMassScore(kind, X0),
                     _variables(ExactPointMassScore(kind, X0), LABELS), jnp.asarray(X0),
                     jnp.asarray(LABELS), jnp.asarray(Z), train=False, reduce_mean=reduce_mean)
    np.testing.assert_allclose(np.asarray(terms), 0.0, atol=1e-6)


def test_zero_network_losses_are_the_noise_energy():
  """A network that outputs 0: the unweighted VP loss and DDPM's are mean(z²) per sample; SMLD's
  (sum) is ½|z|² (its sigma² weight cancels the 1/sigma² of the target)."""
  mean_z2 = np.mean(Z.reshape(B, -1).astype(np.float64) ** 2, axis=1)
  np.testing.assert_allclose(_continuous_terms("vp", Zero(), True, False), mean_z2, rtol=1e-5)
  ddpm = losses.ddpm_terms(SDES["vp"], Zero(), _variables(Zero(), LABELS), jnp.asarray(X0),
                           jnp.asarray(LABELS), jnp.asarray(Z), train=False, reduce_mean=True)
  np.testing.assert_allclose(np.asarray(ddpm), mean_z2, rtol=1e-5)
  smld = losses.smld_terms(SDES["ve"], Zero(), _variables(Zero(), LABELS), jnp.asarray(X0),
                           jnp.asarray(LABELS), jnp.asarray(Z), train=False, reduce_mean=False)
  np.testing.assert_allclose(np.asarray(smld), 0.5 * mean_z2 * H * W * C, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Agreement with a direct float64 computation on a tiny learned network.


def _sde_direct(kind, t):
  """(mean coefficient, std, g²) at t from docs/numerics.md §2, float64."""
  t = t.astype(np.float64)
  if kind == "ve":
    sigma = 0.01 * (50.0 / 0.01) ** t
    return np.ones_like(t), sigma, sigma ** 2 * 2 * np.log(50.0 / 0.01)
  beta = 0.1 + t * (20.0 - 0.1)
  m = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
  if kind == "vp":
    return np.exp(m), np.sqrt(1 - np.exp(2 * m)), beta
  return np.exp(m), 1 - np.exp(2 * m), beta * (1 - np.exp(-2 * 0.1 * t - (20.0 - 0.1) * t ** 2))


def _network(variables, x, labels):
  return np.asarray(TinyNet().apply(variables, jnp.asarray(x, jnp.float32), jnp.asarray(labels)),
                    np.float64)


def _reduce(per_pixel, reduce_mean):
  flat = per_pixel.reshape(per_pixel.shape[0], -1)
  return flat.mean(axis=1) if reduce_mean else 0.5 * flat.sum(axis=1)


@pytest.mark.parametrize("kind", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("reduce_mean, weighting", [(True, False), (False, True)])
def test_continuous_loss_matches_a_direct_computation(kind, reduce_mean, weighting):
  t = T[1:]  # t = 1e-5 makes the direct float64 and the float32 x_t differ too much
  x0, z = X0[1:].astype(np.float64), Z[1:].astype(np.float64)
  variables = _variables(TinyNet(), t)
  coefficient, std, g2 = _sde_direct(kind, t)
  x_t = coefficient[:, None, None, None] * x0 + std[:, None, None, None] * z
  labels = std if kind == "ve" else 999.0 * t  # sigma(t), or 999 t
  output = _network(variables, x_t, labels.astype(np.float32))
  score = output if kind == "ve" else -output / std[:, None, None, None]
  s = std[:, None, None, None]
  expected = (_reduce((score + z / s) ** 2, reduce_mean) * g2 if weighting
              else _reduce((score * s + z) ** 2, reduce_mean))
  ours = losses.dsm_terms(SDES[kind], TinyNet(), variables, jnp.asarray(X0[1:]), jnp.asarray(t),
                          jnp.asarray(Z[1:]), train=False, reduce_mean=reduce_mean,
                          likelihood_weighting=weighting)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=2e-4)


def test_discrete_losses_match_a_direct_computation():
  variables = _variables(TinyNet(), LABELS)
  x0, z = X0.astype(np.float64), Z.astype(np.float64)
  # SMLD: label i -> sigma_max (sigma_min/sigma_max)^(i/(N-1)), from sigma_max down.
  sigma = 50.0 * (0.01 / 50.0) ** (LABELS / (N - 1.0))
  s = sigma[:, None, None, None]
  output = _network(variables, x0 + s * z, LABELS)
  expected = _reduce((output + z / s) ** 2, False) * sigma ** 2
  ours = losses.smld_terms(SDES["ve"], TinyNet(), variables, jnp.asarray(X0),
                           jnp.asarray(LABELS), jnp.asarray(Z), train=False, reduce_mean=False)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=2e-4)
  # DDPM: alpha-bar_i = prod_{j<=i} (1 - beta_j), betas = linspace(beta_min/N, beta_max/N, N).
  alpha_bar = np.cumprod(1 - np.linspace(0.1 / N, 20.0 / N, N))[LABELS][:, None, None, None]
  output = _network(variables, np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * z, LABELS)
  expected = _reduce((output - z) ** 2, True)
  ours = losses.ddpm_terms(SDES["vp"], TinyNet(), variables, jnp.asarray(X0),
                           jnp.asarray(LABELS), jnp.asarray(Z), train=False, reduce_mean=True)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=2e-4)


def test_loss_fn_draws_t_in_range_and_averages_the_terms():
  sde = SDES["vp"]
  variables = _variables(TinyNet(), T)
  loss_fn = losses.get_dsm_loss_fn(sde, TinyNet(), train=True, reduce_mean=True)
  rng = jax.random.PRNGKey(3)
  loss = loss_fn(rng, variables, jnp.asarray(X0))
  t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
  t = jax.random.uniform(t_rng, (B,), minval=losses.CONTINUOUS_EPS, maxval=1.0)
  terms = losses.dsm_terms(sde, TinyNet(), variables, jnp.asarray(X0), t,
                           jax.random.normal(z_rng, X0.shape), train=True, reduce_mean=True,
                           likelihood_weighting=False, dropout_rng=dropout_rng)
  np.testing.assert_allclose(float(loss), float(np.mean(terms)), rtol=1e-6)
  # Training mode uses dropout: another key gives another loss; eval mode is deterministic.
  assert float(loss_fn(jax.random.PRNGKey(4), variables, jnp.asarray(X0))) != float(loss)


@pytest.mark.parametrize("module, expected", [
    (ncsnpp_ve_continuous, "dsm"), (ddpmpp_vp_continuous, "dsm"), (subvp_ddpmpp_continuous, "dsm"),
    (ncsnpp_ve_discrete, "smld"), (ddpm_vp_discrete, "ddpm")])
def test_config_selects_the_released_loss(module, expected, monkeypatch):
  chosen = []
  for name in ("dsm", "smld", "ddpm"):
    monkeypatch.setattr(losses, f"get_{name}_loss_fn",
                        lambda *a, _name=name, **k: chosen.append((_name, k)))
  config = module.get_config()
  losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)
  assert chosen[0][0] == expected
  assert chosen[0][1]["reduce_mean"] == config.training.reduce_mean


def test_impossible_loss_choices_are_clear_errors():
  config = ddpm_vp_discrete.get_config()
  config.training.likelihood_weighting = True
  with pytest.raises(ValueError, match="likelihood_weighting"):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)
  config = subvp_ddpmpp_continuous.get_config()
  config.training.continuous = False
  with pytest.raises(ValueError, match="vesde .SMLD. and vpsde .DDPM."):
    losses.get_loss_fn(config, sde_lib.get_sde(config), None, train=True)


# ---------------------------------------------------------------------------------------------
# Optimiser and EMA.


def test_optimizer_is_adam_with_warmup_and_clipping():
  config = ml_collections.ConfigDict(dict(optim=dict(
      optimizer="Adam", lr=0.1, beta1=0.9, eps=1e-8, warmup=4, grad_clip=1.0, weight_decay=0)))
  optimizer = losses.get_optimizer(config)
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = optimizer.init(params)
  grads = [np.array([3.0, 4.0, 0.0]), np.array([0.1, -0.2, 0.05]), np.array([-6.0, 0.0, 8.0]),
           np.array([0.3, 0.3, -0.3]), np.array([1.0, 2.0, 2.0])]
  w, m, v = np.array([1.0, -2.0, 3.0]), np.zeros(3), np.zeros(3)
  for step, g in enumerate(grads):
    updates, state = optimizer.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    g = g * 1.0 / max(np.linalg.norm(g), 1.0)        # clip to global norm 1
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g ** 2
    m_hat, v_hat = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
    lr = 0.1 * min(step / 4, 1.0)                   # the step-th update; the first has lr 0
    w = w - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-5, atol=1e-7)
  config.optim.grad_clip = -1.0  # off: a large gradient is used as it is
  assert len(losses.get_optimizer(config).init(params)) == 4


def test_ema_update():
  ema = losses.ema_update({"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([3.0, 6.0])}, 0.75)
  np.testing.assert_allclose(np.asarray(ema["a"]), [1.5, 3.0])


def test_optimizer_must_be_adam():
  config = ml_collections.ConfigDict(dict(optim=dict(optimizer="SGD")))
  with pytest.raises(ValueError, match="only 'Adam'"):
    losses.get_optimizer(config)
