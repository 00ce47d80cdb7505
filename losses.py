"""Training objectives, optimiser and the jitted training step (score_sde's `losses.py`).

Which loss a config trains with (as in score_sde):
- `training.continuous = True`: denoising score matching over continuous t ~ U(eps, 1) for the VE,
  VP and sub-VP SDEs (`dsm_loss`), optionally likelihood-weighted (`training.likelihood_weighting`);
- `training.continuous = False` with `vesde`: SMLD's loss over the discrete sigma grid (`smld_loss`);
- `training.continuous = False` with `vpsde`: DDPM's noise-prediction loss (`ddpm_loss`).
`training.reduce_mean` averages the per-pixel terms of one sample; otherwise they are half-summed.

Every loss is a pure function of (variables, x0, noise draws): `*_terms` take the draws explicitly
(so a test can check them against a direct computation), and the `get_*_loss_fn` wrappers draw them
from one PRNG key. Shapes: x0 (B, H, W, C) in model space (after `datasets.get_data_scaler`), t (B,),
z like x0, labels (B,) int32; every per-sample term is (B,) and the loss is their mean.

The step (`get_step_fn`) works on global batches: jitted with the batch sharded over a 1-D device
mesh, XLA all-reduces the gradient, so a step on D devices equals the step on one device for the same
global batch (and the same PRNG key), up to float summation order.
"""
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sde_lib
from models import utils as model_utils
from errors import UserError

# Smallest training time of the continuous losses (score_sde uses 1e-5 for every SDE).
CONTINUOUS_EPS = 1e-5


def _reduce(per_pixel, reduce_mean: bool):
  """(B, ...) -> (B,): the mean over each sample's entries, or half their sum."""
  flat = per_pixel.reshape((per_pixel.shape[0], -1))
  return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def _apply(model, variables, x, labels, train, dropout_rng):
  rngs = {"dropout": dropout_rng} if train and dropout_rng is not None else None
  return model.apply(variables, x, labels, train=train, rngs=rngs)


# --------------------------------------------------------------------------------------------
# Continuous denoising score matching (VE / VP / sub-VP).
# --------------------------------------------------------------------------------------------

def dsm_terms(sde, model, variables, x0, t, z, *, train, reduce_mean, likelihood_weighting,
              dropout_rng=None):
  """Per-sample continuous DSM losses (B,) for given times t (B,) and unit noise z (like x0).

  x_t = mean(t)·x0 + std(t)·z is scored by the network's score function s (docs/numerics.md §3):
  without weighting the term is reduce(|s·std + z|²) (λ(t) = std², score_sde's default); with
  likelihood weighting it is reduce(|s + z/std|²)·g(t)² (λ(t) = g², the ELBO-tight weight).
  """
  mean, std = sde.marginal_prob(x0, t)
  x_t = mean + sde_lib.per_sample(std, x0) * z
  score_fn = model_utils.get_score_fn(sde, model, variables, continuous=True, train=train)
  score = score_fn(x_t, t, rng=dropout_rng)
  if likelihood_weighting:
    g2 = sde.sde(jnp.zeros_like(x0), t)[1] ** 2
    return _reduce(jnp.square(score + z / sde_lib.per_sample(std, x0)), reduce_mean) * g2
  return _reduce(jnp.square(score * sde_lib.per_sample(std, x0) + z), reduce_mean)


def get_dsm_loss_fn(sde, model, *, train, reduce_mean=False, likelihood_weighting=False,
                    eps=CONTINUOUS_EPS):
  """loss_fn(rng, variables, x0) -> scalar: `dsm_terms` averaged, t ~ U(eps, T), z ~ N(0, I)."""

  def loss_fn(rng, variables, x0):
    t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    t = jax.random.uniform(t_rng, (x0.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, x0.shape)
    return jnp.mean(dsm_terms(sde, model, variables, x0, t, z, train=train,
                              reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting,
                              dropout_rng=dropout_rng))

  return loss_fn


# --------------------------------------------------------------------------------------------
# Discrete losses: SMLD (VE) and DDPM (VP).
# --------------------------------------------------------------------------------------------

def smld_sigmas(vesde: sde_lib.VESDE):
  """The SMLD noise levels (N,) from sigma_max (label 0) down to sigma_min (label N-1): the order
  discrete VE networks index (`models.utils.get_sigmas`)."""
  return vesde.discrete_sigmas[::-1]


def smld_terms(vesde, model, variables, x0, labels, z, *, train, reduce_mean, dropout_rng=None):
  """Per-sample SMLD losses (B,): x = x0 + sigma·z with sigma = smld_sigmas[labels], the network
  (fed the int labels) regresses the score -(x - x0)/sigma²; each term is weighted by sigma²."""
  sigmas = smld_sigmas(vesde)[labels]
  noise = sde_lib.per_sample(sigmas, x0) * z
  score = _apply(model, variables, x0 + noise, labels, train, dropout_rng)
  target = -noise / sde_lib.per_sample(sigmas ** 2, x0)
  return _reduce(jnp.square(score - target), reduce_mean) * sigmas ** 2


def ddpm_terms(vpsde, model, variables, x0, labels, z, *, train, reduce_mean, dropout_rng=None):
  """Per-sample DDPM losses (B,): x = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·z at step `labels`; the network (fed
  the int labels) predicts z."""
  x = (sde_lib.per_sample(vpsde.sqrt_alphas_cumprod[labels], x0) * x0
       + sde_lib.per_sample(vpsde.sqrt_1m_alphas_cumprod[labels], x0) * z)
  predicted = _apply(model, variables, x, labels, train, dropout_rng)
  return _reduce(jnp.square(predicted - z), reduce_mean)


def _get_discrete_loss_fn(terms_fn, sde, model, *, train, reduce_mean):

  def loss_fn(rng, variables, x0):
    label_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (x0.shape[0],), 0, sde.N)
    z = jax.random.normal(z_rng, x0.shape)
    return jnp.mean(terms_fn(sde, model, variables, x0, labels, z, train=train,
                             reduce_mean=reduce_mean, dropout_rng=dropout_rng))

  return loss_fn


def get_smld_loss_fn(vesde, model, *, train, reduce_mean=False):
  """loss_fn(rng, variables, x0) -> scalar: `smld_terms` with labels ~ U{0..N-1}, z ~ N(0, I)."""
  return _get_discrete_loss_fn(smld_terms, vesde, model, train=train, reduce_mean=reduce_mean)


def get_ddpm_loss_fn(vpsde, model, *, train, reduce_mean=True):
  """loss_fn(rng, variables, x0) -> scalar: `ddpm_terms` with labels ~ U{0..N-1}, z ~ N(0, I)."""
  return _get_discrete_loss_fn(ddpm_terms, vpsde, model, train=train, reduce_mean=reduce_mean)


def get_loss_fn(config, sde, model, *, train):
  """The loss `config.training` selects (see the module docstring), for `sde` = get_sde(config)."""
  training = config.training
  reduce_mean = bool(training.reduce_mean)
  likelihood_weighting = bool(training.likelihood_weighting)
  if model_utils.uses_continuous_labels(config):
    return get_dsm_loss_fn(sde, model, train=train, reduce_mean=reduce_mean,
                           likelihood_weighting=likelihood_weighting)
  if likelihood_weighting:
    raise UserError("config.training.likelihood_weighting=True needs continuous training; the "
                     "discrete SMLD/DDPM losses have fixed weights.")
  if type(sde) is sde_lib.VESDE:
    return get_smld_loss_fn(sde, model, train=train, reduce_mean=reduce_mean)
  if type(sde) is sde_lib.VPSDE:
    return get_ddpm_loss_fn(sde, model, train=train, reduce_mean=reduce_mean)
  raise UserError(f"Discrete training (config.training.continuous=False) is defined for vesde "
                   f"(SMLD) and vpsde (DDPM), not config.training.sde={config.training.sde!r}.")


# --------------------------------------------------------------------------------------------
# Optimiser, training state, step.
# --------------------------------------------------------------------------------------------

def learning_rate_schedule(config) -> Callable:
  """lr(step) = optim.lr · min(step / optim.warmup, 1) (no warm-up when warmup <= 0); `step`
  counts the updates already applied, so the very first update of a warm-up has rate 0."""
  lr, warmup = float(config.optim.lr), int(config.optim.warmup)
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return lambda step: lr * jnp.minimum(step / warmup, 1.0)


def get_optimizer(config) -> optax.GradientTransformation:
  """Adam from `config.optim` (lr, beta1, eps, weight_decay, amsgrad, warmup, grad_clip).

  Gradients are first clipped to global norm `grad_clip` (g·c/max(|g|, c); off when grad_clip < 0),
  then Adam (beta2 = 0.999) with the warm-up schedule; weight decay is decoupled, as flax.optim's
  Adam applied it.
  """
  optim = config.optim
  name = str(optim.optimizer).lower()
  if name != "adam":
    raise UserError(f"config.optim.optimizer={optim.optimizer!r}: only 'Adam' is supported (as "
                     "in score_sde).")
  weight_decay = float(optim.get("weight_decay", 0.0) or 0.0)
  grad_clip = float(optim.grad_clip)
  moments = optax.scale_by_amsgrad if optim.get("amsgrad", False) else optax.scale_by_adam
  return optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip >= 0 else optax.identity(),
      moments(b1=float(optim.beta1), b2=0.999, eps=float(optim.eps)),
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.scale_by_learning_rate(learning_rate_schedule(config)))


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs. `params_ema` and `model_state` are what sampling uses:
  variables = {'params': params_ema, **model_state}."""
  step: Any          # int32 scalar: updates applied so far
  params: Any        # the raw (optimised) weights
  opt_state: Any     # optax state of `get_optimizer(config)`
  params_ema: Any    # EMA of params at model.ema_rate
  model_state: Any   # non-parameter collections of the model (constant during training)
  rng: Any           # PRNG key of the next step

  def sampling_variables(self):
    return {"params": self.params_ema, **self.model_state}


def init_train_state(config, model, optimizer, rng) -> TrainState:
  """A fresh state: the network initialised on a (1, H, W, C) input, EMA = the initial weights."""
  size, channels = config.data.image_size, config.data.num_channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  continuous = model_utils.uses_continuous_labels(config)
  labels = jnp.ones((1,), jnp.float32 if continuous else jnp.int32)
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, x, labels, train=False)
  variables = flax.core.unfreeze(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    opt_state=optimizer.init(params), params_ema=params,
                    model_state=variables, rng=state_rng)


def ema_update(params_ema, params, rate: float):
  """EMA: rate·ema + (1 - rate)·params, leaf by leaf."""
  return jax.tree_util.tree_map(lambda e, p: e * rate + p * (1.0 - rate), params_ema, params)


class StepFns(NamedTuple):
  train: Callable   # (state, images (n, B, H, W, C)) -> (state, losses (n,))
  eval: Callable    # (state, images (B, H, W, C), rng) -> scalar loss with the EMA weights


def get_step_fns(config, sde, model, optimizer, scaler: Optional[Callable] = None) -> StepFns:
  """Un-jitted training and evaluation steps of `config`.

  `train(state, images)` runs `images.shape[0]` optimiser steps in one `lax.scan`
  (`training.n_jitted_steps` per compiled call), one global batch (B, H, W, C) each; `images` are
  in [0, 1] and `scaler` (datasets.get_data_scaler) maps them to model space. Each step splits the
  state's key, draws the loss's noise from it, applies the clipped Adam update and the EMA.
  `eval(state, images, rng)` is the loss of the EMA weights in eval mode (no dropout).
  """
  scaler = scaler or (lambda x: x)
  train_loss = get_loss_fn(config, sde, model, train=True)
  eval_loss = get_loss_fn(config, sde, model, train=False)
  ema_rate = float(config.model.ema_rate)

  def one_step(state: TrainState, images):
    rng, step_rng = jax.random.split(state.rng)

    def objective(params):
      return train_loss(step_rng, {"params": params, **state.model_state}, scaler(images))

    loss, grads = jax.value_and_grad(objective)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          params_ema=ema_update(state.params_ema, params, ema_rate), rng=rng)
    return state, loss

  def train(state, images):
    if jax.default_backend() != "cpu":
      return jax.lax.scan(one_step, state, images)
    # On the CPU, XLA runs the gradient ~17x slower inside a loop (even a one-step scan) than
    # straight-line (NCSN++ nf 16, 16 px, batch 64: 2.9 s vs 0.17 s per step), so the steps are
    # traced one after another.
    losses = []
    for i in range(images.shape[0]):
      state, loss = one_step(state, images[i])
      losses.append(loss)
    return state, jnp.stack(losses)

  def evaluate(state, images, rng):
    return eval_loss(rng, state.sampling_variables(), scaler(images))

  return StepFns(train=train, eval=evaluate)


def num_params(tree) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))
