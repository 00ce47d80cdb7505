"""From a config to samples: `build` makes the configured sampler, `run` draws one batch with it.

    sampler = factory.build(config, (B, H, W, C), batch_sharding=...)
    x, nfe = factory.run(sampler, rng, variables, tdas, progress_label="round 0")

`config.sampling.method` names a class registered in `sampling.interface.SAMPLERS`; every module
of this package is imported here, so a new method is one decorated class (in a module of its own
or beside the others) and nothing else.
"""
import importlib
import pkgutil

import jax
import numpy as np
from tqdm import tqdm

import sde_lib
from models import utils as model_utils
from sampling import devices
from sampling import guidance as guidance_lib
from sampling.interface import SAMPLERS, SamplerSetup, SteppedSampler
from errors import UserError


class SamplingError(UserError):
  """A sampling run that produced unusable samples (NaN or inf)."""


def _import_sampler_modules():
  """Imports every module of `sampling/`, which runs their `SAMPLERS.register` decorators."""
  import sampling  # pylint: disable=g-import-not-at-top
  for module in pkgutil.iter_modules(sampling.__path__):
    importlib.import_module(f"sampling.{module.name}")


def sampling_steps(config):
  """(N', k): the sampler's number of steps and the speed-up over model.num_scales."""
  full = config.model.num_scales
  num_steps, speedup = int(config.sampling.num_steps), float(config.sampling.speedup)
  if num_steps < 0:
    raise UserError(f"config.sampling.num_steps must be >= 0 (0 = model.num_scales), got "
                     f"{num_steps}.")
  if num_steps == 0:
    if not speedup > 0:
      raise UserError(f"config.sampling.speedup must be positive, got {speedup}.")
    rule = str(config.sampling.get("speedup_rule", "round"))
    if rule not in ("round", "truncate"):
      raise UserError(f"config.sampling.speedup_rule={rule!r} must be 'round' or 'truncate'.")
    num_steps = max(1, int(round(full / speedup)) if rule == "round" else int(full / speedup))
  return num_steps, full / num_steps


def make_setup(config, shape, model=None, batch_sharding=None) -> SamplerSetup:
  """The `SamplerSetup` (SDE with N' steps, eps, score-function builder, ...) of `config` for
  global batches of `shape`: what `build` gives the configured method."""
  num_steps, speedup = sampling_steps(config)
  sde = sde_lib.get_sde(config, num_steps)
  eps = sde.sampling_eps * (speedup if config.sampling.eps_scale_with_speedup else 1.0)
  model = model_utils.create_model(config) if model is None else model
  continuous = model_utils.uses_continuous_labels(config)

  guidance = guidance_lib.from_config(config)

  def score_fn_builder(variables):
    if guidance is None:
      return model_utils.get_score_fn(sde, model, variables, continuous,
                                      num_scales=config.model.num_scales)
    # Class-conditional: score + w ∇ log p_t(y | x) (sampling/guidance.py).
    guidance_lib.check_variables(variables)
    score_fn = model_utils.get_score_fn(sde, model, variables.network, continuous,
                                        num_scales=config.model.num_scales)
    scale = guidance.scale if variables.scale is None else variables.scale
    return guidance_lib.guided_score_fn(score_fn, guidance.logit_fn_builder(variables.classifier),
                                        sde, variables.labels, scale)

  return SamplerSetup(sde=sde, score_fn_builder=score_fn_builder, shape=tuple(shape), eps=eps,
                      speedup=speedup, batch_sharding=batch_sharding,
                      training_sde=sde_lib.get_sde(config), continuous=continuous,
                      guidance=guidance)


def build(config, shape, model=None, batch_sharding=None):
  """The sampler `config.sampling.method` names, for global batches of `shape` (B, H, W, C).

  Args:
    config: the run's config (`config.sampling`, `config.model`, `config.training`).
    shape: (B, H, W, C) of one global batch.
    model: the network (default: `models.utils.create_model(config)`).
    batch_sharding: how x is split over devices (`sampling.devices.batch_sharding`), or None.
  Returns:
    A `sampling.interface.Sampler`; its `setup` holds the SDE, eps and speed-up it resolved.
  """
  setup = make_setup(config, shape, model, batch_sharding)
  _import_sampler_modules()
  method = SAMPLERS.get(config.sampling.method)
  return method.from_config(config, setup)


def run(sampler, rng, variables, tdas=None, progress_label=None, what=None):
  """One global batch of samples in model space: (this host's rows as numpy, NFE as an int).

  A method with steps runs in chunks so that a progress bar can follow it (bit-identical to one
  call). With `what` (e.g. "Round 3"), a batch holding NaN or inf raises SamplingError naming it,
  so that the caller writes nothing for it.
  """
  if isinstance(sampler, SteppedSampler):
    state = sampler.init(rng, tdas)
    chunk = sampler.chunk_size()
    with tqdm(total=sampler.num_steps, desc=progress_label, unit="step", leave=False,
              disable=progress_label is None) as bar:
      for start in range(0, sampler.num_steps, chunk):
        state = sampler.advance(state, variables, start, num=chunk)
        jax.block_until_ready(state)
        bar.update(min(chunk, sampler.num_steps - start))
    result = sampler.finish(state)
  else:
    result = sampler.sample(rng, variables, tdas)
  x = devices.local_rows(result.samples)
  if what is not None and not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)))
    steps = sampler.num_steps or "these"
    raise SamplingError(
        f"{what}: {bad} of {x.shape[0]} samples contain NaN or inf; nothing was written for it. "
        f"With {steps} steps the sampler may be unstable (try more steps, a smaller "
        "config.sampling.snr, or check the checkpoint).")
  return x, int(result.nfe)
