"""Model registry, model construction and the score-function wrapper.

Every network is a `flax.linen.Module` constructed as `cls(config=config)` and called as
`model.apply(variables, x, labels, train=False)` with `x` of shape (B, H, W, C) float32 and
`labels` of shape (B,) (float noise levels / times, or int32 indices for discrete models).
"""
from typing import Callable, Dict, Type

import flax.linen as nn
from errors import UserError

_MODELS: Dict[str, Type[nn.Module]] = {}


def register_model(cls=None, *, name=None):
  """Class decorator adding a model to the registry under `name` (default: class name)."""

  def _register(model_cls):
    key = model_cls.__name__ if name is None else name
    if key in _MODELS:
      raise ValueError(f"A model named {key!r} is already registered ({_MODELS[key]}).")
    _MODELS[key] = model_cls
    return model_cls

  return _register if cls is None else _register(cls)


def _import_model_families():
  # Importing the family modules runs their `register_model` decorators.
  from models import analytic, ddpm, ncsnpp, ncsnv2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def get_model(name: str) -> Type[nn.Module]:
  """The registered model class called `name` (`config.model.name`)."""
  _import_model_families()
  if name not in _MODELS:
    raise UserError(
        f"config.model.name={name!r} is not a known model; known: {sorted(_MODELS)}.")
  return _MODELS[name]


def create_model(config) -> nn.Module:
  """The (uninitialised) network that `config.model.name` selects, bound to `config`."""
  return get_model(config.model.name)(config=config)


def get_sigmas(config):
  """Noise levels of a discrete VE model, shape (num_scales,), from sigma_max DOWN to sigma_min.

  Discrete VE labels (docs/numerics.md §3) index this array, and NCSN++/NCSNv2 with `scale_by_sigma`
  divide by `sigmas[labels]`. Computed in float64 numpy, like the released code, so every entry
  agrees with it to the last float32 bit.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                            config.model.num_scales))


def uses_continuous_labels(config) -> bool:
  """Whether the network of `config` takes continuous labels (sigma(t) or 999 t) or indices.

  `config.training.continuous`, except for networks that only know a table of noise levels
  (NCSNv2/NCSN), which always take int32 indices.
  """
  model_cls = get_model(config.model.name)
  return bool(config.training.continuous) and not getattr(model_cls, "discrete_labels_only", False)


def get_score_fn(sde, model, variables, continuous, num_scales=None, train=False):
  """Wraps a network into a score function (x, t) -> grad_x log p_t(x) (docs/numerics.md §3).

  Args:
    sde: a `sde_lib` SDE (its type picks the label convention).
    model: the network from `create_model`.
    variables: its variables, `{'params': ..., **model_state}`.
    continuous: whether the network takes continuous labels (`uses_continuous_labels(config)`);
      ignored (False) for networks with `discrete_labels_only`.
    num_scales: the number of noise levels a *discrete* network was trained with
      (`config.model.num_scales`). Labels and the VP std table use it, never the sampler's N, which
      acceleration changes. Defaults to `sde.N`.
    train: run the network in training mode; the score function then takes a dropout `rng`.

  Returns:
    score_fn(x, t, rng=None): x (B, H, W, C), t (B,) -> score shaped like x.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sde_lib  # pylint: disable=g-import-not-at-top

  num_scales = sde.N if num_scales is None else num_scales
  continuous = continuous and not getattr(model, "discrete_labels_only", False)

  def apply(x, labels, rng):
    rngs = {"dropout": rng} if train and rng is not None else None
    return model.apply(variables, x, labels, train=train, rngs=rngs)

  if isinstance(sde, sde_lib.VESDE):

    def score_fn(x, t, rng=None):
      if continuous:
        labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]  # sigma(t)
      else:
        # Index into the network's sigmas, ordered from sigma_max (index 0) down to sigma_min.
        labels = jnp.round((sde.T - t) * (num_scales - 1)).astype(jnp.int32)
      return apply(x, labels, rng)

  elif isinstance(sde, sde_lib.VPSDE):  # VPSDE and subVPSDE
    if not continuous:
      if type(sde) is not sde_lib.VPSDE:
        raise UserError("Discrete training (config.training.continuous=False) is defined for "
                         f"vesde and vpsde only, not {type(sde).__name__}.")
      training_sde = sde_lib.VPSDE(sde.beta_0, sde.beta_1, num_scales)

    def score_fn(x, t, rng=None):
      if continuous:
        labels = t * 999
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
      else:
        labels = t * (num_scales - 1)
        std = training_sde.sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]
      output = apply(x, labels, rng)
      return -output / sde_lib.per_sample(std, x)

  else:
    raise ValueError(f"No score-function convention for SDE {type(sde).__name__}.")
  return score_fn
