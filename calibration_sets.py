"""The two vanilla sample sets `--mode calibrate` compares: the full N and the accelerated N'.

Each set is drawn in batches with the vanilla sampler; only its frequency statistics are kept,
one cache file per batch (`tdas.files`), so that a set is computed once per config and seed and
an interrupted run resumes.
"""
import hashlib
import json
import math
import os

import jax
from absl import logging
from tqdm import tqdm

import images
from configs import project_fields
from sampling import devices, factory
from tdas import files as tdas_files
from tdas import stats as tdas_stats
from errors import UserError

# Images per preview grid kept with the cached sample statistics.
PREVIEW_IMAGES = 16


def calibration_steps(config):
  """(N, N') of `--mode calibrate`: model.num_scales and the target number of steps.

  N' is `calibrate.steps`, else round(N / `calibrate.speedup`), else the sampling's own N'.
  """
  settings = project_fields.section_with_defaults(config, "calibrate")
  full = int(config.model.num_scales)
  steps, speedup = int(settings.steps), float(settings.speedup)
  if steps < 0:
    raise UserError(f"config.calibrate.steps must be >= 0 (0 = from calibrate.speedup), got "
                     f"{steps}.")
  if speedup < 0:
    raise UserError(f"config.calibrate.speedup must be >= 0 (0 = unset), got {speedup}.")
  if steps == 0:
    steps = (max(1, int(round(full / speedup))) if speedup > 0
             else factory.sampling_steps(config)[0])
  return full, steps


def vanilla_config(config, steps):
  """A copy of `config` that samples vanilla (TDAS off) with `steps` steps."""
  copied = config.copy_and_resolve_references()
  with copied.unlocked():
    copied.sampling.num_steps = int(steps)
    copied.sampling.speedup = 1.0
    copied.sampling.tdas.enabled = False
    copied.sampling.tdas.preset = ""
  return copied


def cache_key(config, source, seed, batch_size):
  """A short hash of everything that decides a calibration sample set (not N': it is in the
  folder name)."""
  sampling = {k: v for k, v in config.sampling.to_dict().items()
              if k not in ("num_steps", "speedup", "tdas", "vanilla_comparison", "seed",
                           "distributed", "matmul_precision")}
  described = dict(model=config.model.to_dict(), sampling=sampling,
                   training={k: config.training.get(k) for k in ("sde", "continuous")},
                   data={k: config.data.get(k) for k in ("image_size", "num_channels",
                                                          "centered")},
                   source=source, seed=int(seed), batch_size=int(batch_size))
  text = json.dumps(described, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def set_statistics(config, model, variables, steps, num_samples, batch_size, seed, directory,
                   label):
  """Frequency statistics of `num_samples` vanilla samples with `steps` steps, cached per batch.

  Batch k is drawn with key fold_in(PRNGKey(seed), k) and its statistics (`tdas.stats`
  `ImageStatistics`, data scale) are written to `<directory>/batch_<k>.npz`; a batch already
  there is read instead of drawn. Whole batches are drawn: the set holds
  ceil(num_samples / batch_size) · batch_size images.

  Returns:
    (ImageStatistics, preview uint8 (<=16, H, W, C), nfe or None when every batch was cached).
  """
  os.makedirs(directory, exist_ok=True)
  config = vanilla_config(config, steps)
  mesh = devices.batch_mesh()
  devices.check_batch_size(batch_size, mesh, "config.calibrate.batch_size")
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  num_batches = int(math.ceil(num_samples / batch_size))
  total, preview, sampler, nfe = tdas_stats.ImageStatistics(), None, None, None
  key = jax.random.PRNGKey(seed)
  for k in tqdm(range(num_batches), desc=f"{label} ({steps} steps)", unit="batch"):
    path = os.path.join(directory, f"batch_{k}.npz")
    if os.path.exists(path):
      try:
        cached, cached_preview = tdas_files.read_statistics_batch(path, shape[1:])
      except UserError as damaged:  # a damaged cache entry is the program's own: redo it
        logging.warning("%s; sampling batch %d again.", damaged, k)
      else:
        total.merge(cached)
        if k == 0:
          preview = cached_preview
        continue
    if sampler is None:
      sampler = factory.build(config, shape, model, devices.batch_sharding(mesh))
      variables = jax.device_put(variables, devices.replicated(mesh))
    x, nfe = factory.run(sampler, jax.random.fold_in(key, k), variables, None,
                         progress_label=f"{label} batch {k}",
                         what=f"The {label} set ({steps} steps), batch {k}")
    batch_stats = tdas_stats.ImageStatistics().update(images.to_data_scale(x,
                                                                           config.data.centered))
    if k == 0:
      preview = images.to_uint8(x[:PREVIEW_IMAGES], config.data.centered)
    tdas_files.save_statistics_batch(path, batch_stats, preview if k == 0 else None)
    total.merge(batch_stats)
  return total, preview, nfe
