"""`--mode inpaint` and `--mode colorize`: fill masked pixels, or colour grey images, with the PC
sampler (`sampling.conditional`), vanilla or with TDAS.

Images come from `config.inpaint.images` (an `.npz` with `images` uint8 (N, H, W, C) or an image
folder) or, when it is empty, from the data set's evaluation split. Inpainting's mask is
`config.inpaint.mask`: a pattern — `center` (the middle half of each side unknown), `left_half`,
`random_<p>` (each pixel unknown with probability p, seeded) — or a file (`.npy`/`.npz` `mask` or a
PNG) of shape (H, W) or (H, W, C), values in [0, 1], 1 = known. Writes under
<workdir>/<inpaint|colorize>/: `results.npz` (`inputs`, `mask`, `samples`, `originals`, uint8),
`grid.png` (original | input | result rows) and `inpaint.json` / `colorize.json`.
"""
import json
import os
import re
import time

import jax
import numpy as np
from absl import logging

import checkpoints
import datasets
import images as image_io
import sample_rounds
import validation
from atomic_io import atomic_savez, atomic_write_text
from sampling import conditional, devices, factory
from tdas import settings as tdas_settings
from errors import UserError

MASK_FIELD = "config.inpaint.mask"


def named_mask(spec: str, image_shape, seed: int = 0) -> np.ndarray:
  """The (H, W, C) float32 mask (1 = known) of `spec`: a pattern or a file (see module doc)."""
  height, width, channels = image_shape
  mask = np.ones((height, width), np.float32)
  if spec == "center":
    mask[height // 4:height - height // 4, width // 4:width - width // 4] = 0
  elif spec == "left_half":
    mask[:, :width // 2] = 0
  elif re.fullmatch(r"random_(0?\.\d+|1(\.0*)?|0)", spec or ""):
    p = float(spec.split("_", 1)[1])
    mask = (np.random.default_rng(seed).random((height, width)) >= p).astype(np.float32)
  elif spec and os.path.isfile(spec):
    mask = _read_mask_file(spec)
  else:
    raise UserError(f"{MASK_FIELD}={spec!r} is neither a pattern (center, left_half, "
                     "random_<p> with 0 <= p <= 1) nor an existing mask file.")
  if mask.ndim == 2:
    mask = np.repeat(mask[..., None], channels, axis=-1)
  if mask.shape != (height, width, channels):
    raise UserError(f"{MASK_FIELD}={spec!r} has shape {mask.shape}; the images are "
                     f"{(height, width, channels)} (give (H, W) or (H, W, C)).")
  if not np.all((mask >= 0) & (mask <= 1)):
    raise UserError(f"{MASK_FIELD}={spec!r} has values outside [0, 1] (1 = known).")
  if mask.min() == 1:
    raise UserError(f"{MASK_FIELD}={spec!r} leaves no pixel unknown: there is nothing to fill.")
  if mask.max() == 0:
    raise UserError(f"{MASK_FIELD}={spec!r} leaves no pixel known: that is unconditional "
                     "sampling (--mode sample).")
  return mask.astype(np.float32)


def _read_mask_file(path: str) -> np.ndarray:
  try:
    if path.endswith(".npy"):
      return np.asarray(np.load(path, allow_pickle=False), np.float32)
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["mask"], np.float32)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path) as picture:
      return np.asarray(picture.convert("L"), np.float32) / 255.0
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{MASK_FIELD}={path!r} cannot be read as a mask ({type(e).__name__}: "
                     f"{e}).") from e


def read_images(config, count: int) -> np.ndarray:
  """Up to `count` uint8 (N, H, W, C) images of `config.inpaint.images`, or of the data set's
  evaluation split when that is empty; checked against the config's image size."""
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  path = str(config.inpaint.images)
  if path:
    found = np.concatenate(list(datasets.iterate_images(path, size, channels, max_images=count)))
  else:
    split = datasets.get_split(config, evaluation=True, batch_size=count, num_epochs=1,
                               drop_remainder=False)
    batch = next(split.as_numpy_iterator())["image"]
    found = np.clip(np.round(batch * 255.0), 0, 255).astype(np.uint8)
  if found.shape[1:] != (size, size, channels):
    raise UserError(f"The images of {path or 'the evaluation split'!r} are {found.shape[1:]}; "
                     f"the config's model takes {(size, size, channels)} (config.data).")
  return found[:count]


def run(config, workdir: str, task: str):
  """`--mode inpaint` (task 'inpaint') or `--mode colorize` ('colorize'); returns the summary."""
  validation.check_controllable_mode(config)
  settings = config.inpaint
  count = int(settings.num_images)
  if count < 1:
    raise UserError(f"config.inpaint.num_images={count} must be >= 1.")
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  if task == "colorize" and channels != 3:
    raise UserError(f"--mode colorize needs colour images: config.data.num_channels={channels}.")
  out_dir = os.path.join(workdir, task)
  sample_rounds.check_writable(out_dir)
  originals = read_images(config, count)
  space = "colour" if task == "colorize" else "pixels"
  if space == "pixels":
    mask = named_mask(str(settings.mask), (size, size, channels), int(settings.seed))
  else:
    mask = np.array([1.0, 0.0, 0.0], np.float32)  # the grey axis known

  devices.set_matmul_precision(config)
  variables, source = checkpoints.load_variables(config, workdir)
  tdas = tdas_settings.resolve(config)
  mesh = devices.batch_mesh()
  batch_size = int(config.eval.batch_size)
  devices.check_batch_size(batch_size, mesh)
  shape = (batch_size, size, size, channels)
  sampler = conditional.build(config, shape, space, devices.batch_sharding(mesh))
  variables = jax.device_put(variables, devices.replicated(mesh))
  tdas = tdas.device_put(devices.replicated(mesh))
  scaler = datasets.get_data_scaler(config)

  results, inputs, start = [], [], time.perf_counter()
  for first in range(0, len(originals), batch_size):
    batch = originals[first:first + batch_size]
    rows = len(batch)
    padded = np.concatenate([batch, np.repeat(batch[:1], batch_size - rows, axis=0)])
    known = padded.astype(np.float32) / 255.0
    if space == "colour":
      known = np.repeat(known.mean(axis=-1, keepdims=True), 3, axis=-1)  # the grey image
      shown = known
    else:
      shown = known * mask
    rng = jax.random.fold_in(jax.random.PRNGKey(int(settings.seed)), first // batch_size)
    result = sampler.sample(rng, variables, scaler(known), mask[None], tdas)
    x = devices.local_rows(result.samples)
    if not np.all(np.isfinite(x)):
      raise factory.SamplingError(f"Batch {first // batch_size}: NaN or inf; nothing written.")
    results.append(image_io.to_uint8(x, config.data.centered)[:rows])
    inputs.append(np.clip(np.round(shown * 255.0), 0, 255).astype(np.uint8)[:rows])
  seconds = time.perf_counter() - start
  samples, inputs = np.concatenate(results), np.concatenate(inputs)
  mask_uint8 = np.round(np.broadcast_to(mask, (size, size, channels)) * 255).astype(np.uint8) \
      if space == "pixels" else np.full((size, size, channels), 255, np.uint8)
  atomic_savez(os.path.join(out_dir, "results.npz"), originals=originals, inputs=inputs,
               mask=mask_uint8, samples=samples)
  shown = min(16, len(samples))
  rows = np.concatenate([originals[:shown], inputs[:shown], samples[:shown]])
  image_io.save_png(os.path.join(out_dir, "grid.png"), image_io.image_grid(rows, columns=shown))
  summary = dict(task=task, num_images=int(len(samples)), source=source,
                 images=str(settings.images) or "the evaluation split",
                 mask=str(settings.mask) if space == "pixels" else "grey level known",
                 known_fraction=float(np.mean(mask)) if space == "pixels" else 1 / 3,
                 steps=sampler.num_steps, nfe=sampler.nfe, tdas=tdas.describe(), seed=int(
                     settings.seed), seconds=seconds,
                 grid="rows: originals | inputs | results")
  atomic_write_text(os.path.join(out_dir, f"{task}.json"), json.dumps(summary, indent=2))
  logging.info("%s: %d images in %.1f s -> %s", task, len(samples), seconds, out_dir)
  return summary
