"""Checks of a config's counts and scales, run by the modes before any work.

Each check raises UserError (a ValueError) with one line naming the field, its value and what it
must be, so that a wrong value stops the run before a checkpoint is read or a sample is drawn.
`check_<mode>_mode` is what each mode of `run_lib` calls first.
"""
import math
import os
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


def positive_float(config, dotted: str, allow_zero: bool = False, name: str = "") -> float:
  """`config.<dotted>` as a finite float, checked to be > 0 (or >= 0 with allow_zero); `name` is
  the field's name in the message (default config.<dotted>)."""
  value = _number(config, dotted)
  name = name or f"config.{dotted}"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"{name}={value!r} must be a number.")
  try:
    number = float(value)
  except OverflowError:
    number = math.inf
  if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
    what = "a finite number >= 0" if allow_zero else "a finite positive number"
    raise UserError(f"{name}={value!r} must be {what}.")
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


# --- sizes against the machine's memory --------------------------------------------------------
#
# A count can be a valid integer and still absurd for this machine (eval.batch_size=10**9,
# sampling.num_steps=10**10): such a run would load the model, then die in numpy or XLA with an
# allocation traceback. Each mode estimates the bytes of the arrays it will certainly hold in host
# memory (a lower bound: the network's own activations come on top, on the accelerator or here)
# and refuses, naming the field, what cannot fit in the memory the machine has available now.


def available_memory() -> int:
  """Bytes of memory available to a new allocation now (psutil if installed, else
  /proc/meminfo's MemAvailable, else the free physical pages)."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    return int(psutil.virtual_memory().available)
  except ImportError:
    pass
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _size(nbytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if nbytes < 1024 or unit == "PB":
      return f"{nbytes:.3g} {unit}"
    nbytes /= 1024
  return f"{nbytes:.3g} PB"


def check_fits_memory(nbytes: float, field: str, value, what: str, available=None):
  """Raises UserError naming `field` when `nbytes` (an estimate of `what`) exceeds the memory
  available (default: `available_memory()`)."""
  available = available_memory() if available is None else available
  if nbytes > available:
    raise UserError(f"{field}={value!r} is too large for this machine: {what} needs at least "
                    f"{_size(nbytes)}, and {_size(available)} of memory is available; lower "
                    f"{field}.")


def image_shape(config):
  """(H, W, C) of the config's images, checked."""
  size = positive_int(config, "data.image_size")
  channels = positive_int(config, "data.num_channels")
  return size, size, channels


# float32 images a sampling batch holds on the host (the gathered result and its scaled copy),
# plus its uint8 copy: bytes per pixel value.
_HOST_BYTES_PER_VALUE = 4 + 4 + 1
# float64 arrays per step of a time / noise-level grid (t, σ, and their neighbours).
_GRID_BYTES_PER_STEP = 4 * 8


def check_batch_memory(config, field: str, batch_size: int, extra_bytes: float = 0.0,
                       bytes_per_value: float = _HOST_BYTES_PER_VALUE, what: str = ""):
  """A batch of `batch_size` images (plus `extra_bytes`) must fit in the available memory."""
  height, width, channels = image_shape(config)
  nbytes = float(batch_size) * height * width * channels * bytes_per_value + extra_bytes
  check_fits_memory(nbytes, field, batch_size,
                    what or f"one batch of {batch_size} {height}x{width}x{channels} images")


def check_steps_memory(field: str, steps: int):
  """A grid of `steps` time steps must fit in the available memory."""
  check_fits_memory(float(steps) * _GRID_BYTES_PER_STEP, field, steps,
                    f"the time grid of {steps} steps")


def _section(config, name: str):
  from configs import project_fields  # pylint: disable=g-import-not-at-top
  return project_fields.section_with_defaults(config, name)


def check_sample_mode(config):
  """`--mode sample`: the counts and scales of `check_sampling`, then the sizes against memory."""
  check_sampling(config)
  batch_size = int(config.eval.batch_size)
  check_steps_memory("config.model.num_scales", int(config.model.num_scales))
  if int(config.sampling.num_steps):
    check_steps_memory("config.sampling.num_steps", int(config.sampling.num_steps))
  check_batch_memory(config, "config.eval.batch_size", batch_size)
  if config.sampling.get("export_arr0", False):
    height, width, channels = image_shape(config)
    count = int(config.eval.num_samples)
    check_fits_memory(float(count) * height * width * channels, "config.eval.num_samples",
                      count, f"the arr_0 export of {count} samples (sampling.export_arr0)")


def check_train_mode(config):
  """`--mode train`: batch, run length, snapshot and log periods, learning rate, sizes."""
  image_shape(config)
  positive_int(config, "model.num_scales")
  batch_size = positive_int(config, "training.batch_size")
  n_jitted = positive_int({"n": config.training.get("n_jitted_steps", 1)}, "n",
                          name="config.training.n_jitted_steps")
  positive_int(config, "training.n_iters", allow_zero=True)
  positive_int(config, "training.snapshot_freq")
  for name in ("log_freq", "eval_freq", "snapshot_freq_for_preemption"):
    positive_int(config, f"training.{name}", allow_zero=True)
  positive_float(config, "optim.lr")
  positive_int(config, "optim.warmup", allow_zero=True)
  value = _number(config, "optim.grad_clip")
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise UserError(f"config.optim.grad_clip={value!r} must be a finite number (< 0: no "
                    "clipping).")
  # The data pipeline holds n_jitted_steps batches (float32) and the device copy of them.
  check_batch_memory(config, "config.training.batch_size", batch_size * n_jitted,
                     bytes_per_value=4 + 4,
                     what=f"{n_jitted} batch(es) of {batch_size} training images "
                          "(training.n_jitted_steps x training.batch_size)")


def check_calibrate_mode(config, min_samples: int):
  """`--mode calibrate`: sample counts, batch, steps, bins, quantiles, gains, sizes."""
  settings = _section(config, "calibrate")
  name = lambda key: f"config.calibrate.{key}"  # pylint: disable=unnecessary-lambda-assignment
  num_samples = positive_int(settings, "num_samples", name=name("num_samples"))
  if str(settings.method).lower() == "pds":
    image_shape(config)
    check_batch_memory(config, name("num_samples"), num_samples, bytes_per_value=8 + 8,
                       what=f"the {num_samples} data images PDS's masks average (float64)")
    return
  check_sde(config)
  if num_samples < min_samples:
    raise UserError(f"config.calibrate.num_samples={num_samples} is too few: the statistics need "
                    f"at least {min_samples} samples per set (the paper uses 200).")
  positive_int(settings, "steps", allow_zero=True, name=name("steps"))
  positive_int(settings, "num_bins", name=name("num_bins"))
  max_gain = positive_float(settings, "max_gain", name=name("max_gain"))
  if max_gain < 1:
    raise UserError(f"config.calibrate.max_gain={max_gain!r} must be >= 1 (gains are clipped to "
                    "[1 / max_gain, max_gain]).")
  quantiles = tuple(settings.quantiles)
  if len(quantiles) != 2 or not all(isinstance(q, (int, float)) and 0 < q < 1
                                    for q in quantiles) or not quantiles[0] < quantiles[1]:
    raise UserError(f"config.calibrate.quantiles={quantiles!r} must be two increasing numbers "
                    "in (0, 1).")
  batch_size = (positive_int(settings, "batch_size", allow_zero=True, name=name("batch_size"))
                or positive_int(config, "eval.batch_size"))
  field = name("batch_size") if int(settings.batch_size) else "config.eval.batch_size"
  check_steps_memory("config.model.num_scales", int(config.model.num_scales))
  check_batch_memory(config, field, batch_size)


def check_likelihood_mode(config):
  """`--mode likelihood` (and eval's bits/dim): batch, image count, ODE tolerances, sizes."""
  check_sde(config)
  batch_size = (positive_int(config, "eval.bpd_batch_size", allow_zero=True)
                or positive_int(config, "eval.batch_size"))
  positive_int(config, "eval.bpd_num_images", allow_zero=True)
  positive_float(config, "eval.bpd_rtol")
  positive_float(config, "eval.bpd_atol")
  field = ("config.eval.bpd_batch_size" if int(config.eval.bpd_batch_size)
           else "config.eval.batch_size")
  # The ODE solver keeps several float32 copies of the batch (state, stages, probe).
  check_batch_memory(config, field, batch_size, bytes_per_value=4 * 12)


def check_eval_mode(config):
  """`--mode eval`: the metric; the Inception batch (299 x 299 x 3 float32 per image) against
  memory."""
  metric = config.eval.metric
  if metric not in ("inception", "digits"):
    raise UserError(f"config.eval.metric={metric!r} must be 'inception' (FID, KID, IS) or "
                    "'digits' (the digits demo's metric classifier).")
  batch_size = positive_int({"size": config.eval.get("inception_batch_size", 64)}, "size",
                            name="config.eval.inception_batch_size")
  check_fits_memory(float(batch_size) * 299 * 299 * 3 * 4 * 2, "config.eval.inception_batch_size",
                    batch_size, f"one Inception batch of {batch_size} 299x299 images")
  if config.eval.get("enable_bpd", False):
    check_likelihood_mode(config)


def check_stats_mode(config):
  """`--mode stats`: the image size and the space filter's settings."""
  image_shape(config)
  tdas = config.sampling.tdas
  alpha = positive_float(config, "sampling.tdas.space_alpha")
  if alpha < 1:
    raise UserError(f"config.sampling.tdas.space_alpha={alpha!r} must be >= 1.")
  from tdas import filters  # pylint: disable=g-import-not-at-top
  if tdas.space_f not in filters.SPACE_MAPS:
    raise UserError(f"config.sampling.tdas.space_f={tdas.space_f!r} must be one of "
                    f"{sorted(filters.SPACE_MAPS)}.")


def check_controllable_mode(config):
  """`--mode inpaint` / `colorize`: image count, batch, steps, sizes."""
  check_sde(config)
  positive_int(config, "inpaint.num_images")
  batch_size = positive_int(config, "eval.batch_size")
  positive_int(config, "sampling.num_steps", allow_zero=True)
  if int(config.sampling.num_steps):
    check_steps_memory("config.sampling.num_steps", int(config.sampling.num_steps))
  else:
    positive_float(config, "sampling.speedup")
  check_steps_memory("config.model.num_scales", int(config.model.num_scales))
  count = int(config.inpaint.num_images)
  # The originals, inputs and results (uint8) of every image, and one float32 batch.
  check_batch_memory(config, "config.inpaint.num_images", count, bytes_per_value=3,
                     what=f"the originals, inputs and results of {count} images")
  check_batch_memory(config, "config.eval.batch_size", batch_size)
