"""Checks of a config's counts and scales, run by the modes before any work.

Each check raises ValueError with one line naming the field, its value and what it must be, so
that a wrong value stops the run before a checkpoint is read or a sample is drawn.
"""
import math
from errors import UserError


def _number(config, dotted: str):
  section = config
  for key in dotted.split("."):
    section = section[key]
  return section


def positive_int(config, dotted: str, allow_zero: bool = False, name: str = "") -> int:
  """`config.<dotted>` as an int, checked to be >= 1 (or >= 0 with allow_zero); `name` is the
  field's name in the message (default config.<dotted>)."""
  value = _number(config, dotted)
  name = name or f"config.{dotted}"
  least = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
      or value < least:
    what = "an integer >= 0" if allow_zero else "a positive integer"
    raise UserError(f"{name}={value!r} must be {what}.")
  return int(value)


def positive_float(config, dotted: str, allow_zero: bool = False) -> float:
  """`config.<dotted>` as a finite float, checked to be > 0 (or >= 0 with allow_zero)."""
  value = _number(config, dotted)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"config.{dotted}={value!r} must be a number.")
  try:
    number = float(value)
  except OverflowError:
    number = math.inf
  if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
    what = "a finite number >= 0" if allow_zero else "a finite positive number"
    raise UserError(f"config.{dotted}={value!r} must be {what}.")
  return number


def check_sde(config):
  """model.num_scales and the SDE's scales (σ's for VE, β's for VP / subVP)."""
  positive_int(config, "model.num_scales")
  if str(config.training.sde).lower() == "vesde":
    sigma_min = positive_float(config, "model.sigma_min")
    sigma_max = positive_float(config, "model.sigma_max")
    if not sigma_min < sigma_max:
      raise UserError(f"config.model.sigma_min={sigma_min!r} must be below "
                       f"config.model.sigma_max={sigma_max!r}.")
  elif "beta_min" in config.model:
    beta_min = positive_float(config, "model.beta_min", allow_zero=True)
    beta_max = positive_float(config, "model.beta_max")
    if not beta_min < beta_max:
      raise UserError(f"config.model.beta_min={beta_min!r} must be below "
                       f"config.model.beta_max={beta_max!r}.")


def check_sampling(config):
  """Everything `--mode sample` counts or scales: the batch, the sample count, the steps."""
  check_sde(config)
  positive_int(config, "eval.batch_size")
  positive_int(config, "eval.num_samples")
  positive_int(config, "sampling.num_steps", allow_zero=True)
  if int(config.sampling.num_steps) == 0:
    positive_float(config, "sampling.speedup")
