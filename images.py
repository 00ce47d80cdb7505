"""Samples as pictures: model space -> uint8 or data scale, grids, PNG files, side-by-side plots.

Shapes: images are NHWC; uint8 for pictures, float in [0, 1] for statistics.
"""
import math
import os

import numpy as np

from atomic_io import atomic_savefig, atomic_savez, atomic_write


def to_uint8(x, centered: bool) -> np.ndarray:
  """Model-space samples -> uint8 images (data.centered maps [-1, 1] back to [0, 1])."""
  x = np.asarray(x, np.float32)
  if centered:
    x = (x + 1.0) / 2.0
  return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def to_data_scale(x, centered: bool) -> np.ndarray:
  """Model-space samples -> float data scale [0, 1] (no clipping: statistics, not pictures)."""
  x = np.asarray(x, np.float64)
  return (x + 1.0) / 2.0 if centered else x


# samples_grid.png shows round 0 whole, up to this many samples (a 16 × 16 grid).
GRID_MAX_IMAGES = 256

# Grid tiles smaller than this are enlarged (nearest neighbour) so that a person can see them.
MIN_TILE = 64


def image_grid(images: np.ndarray, columns: int = 0, min_tile: int = MIN_TILE) -> np.ndarray:
  """(N, H, W, C) uint8 -> one (rows·s·H, columns·s·W, C) uint8 grid with 2-px gaps, each image
  enlarged s = ceil(min_tile / max(H, W)) times by pixel repetition (s = 1 from min_tile px)."""
  scale = max(1, int(math.ceil(min_tile / max(images.shape[1:3]))))
  if scale > 1:
    images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  gap = 2
  grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), 255, np.uint8)
  for k in range(n):
    r, col = divmod(k, columns)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = images[k]
  return grid


def class_grid(images: np.ndarray, labels: np.ndarray, columns: int = 10,
               max_rows: int = 10) -> np.ndarray:
  """`image_grid` of (N, H, W, C) uint8 images grouped by class of `labels` (N,), in ascending
  class order: each class gets max(1, max_rows // classes) rows of `columns` images (its first
  ones), blank (white) tiles where it has fewer. One class fills the grid; ten get a row each."""
  labels = np.asarray(labels).reshape(-1)
  classes = np.unique(labels)
  per_class = columns * max(1, max_rows // len(classes))
  rows = []
  for label in classes:
    chosen = images[labels == label][:per_class]
    tiles = -(-len(chosen) // columns) * columns  # whole rows
    blank = np.full((tiles - len(chosen),) + images.shape[1:], 255, np.uint8)
    rows.append(np.concatenate([chosen, blank]))
  return image_grid(np.concatenate(rows), columns)


def export_arr0(folder: str, round_files) -> str:
  """Every round's samples as one `arr_0` uint8 (N, H, W, C) .npz, the layout guided-diffusion's
  and EDM's evaluators read: <folder>/arr0_<N>x<H>x<W>x<C>.npz. Returns its path."""
  samples = np.concatenate([np.load(path)["samples"] for path in round_files])
  name = "arr0_" + "x".join(str(s) for s in samples.shape) + ".npz"
  return atomic_savez(os.path.join(folder, name), compressed=False, arr_0=samples)


def save_png(path, image: np.ndarray):
  """Writes an (H, W, C) uint8 image (C = 1 as grey) to `path`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = image[..., 0] if image.shape[-1] == 1 else image
  with atomic_write(path) as f:  # a full disk leaves no truncated picture behind
    Image.fromarray(image).save(f, format="PNG")


def save_comparison(path, vanilla: np.ndarray, tdas: np.ndarray, steps: int, nfe: int,
                    label: str = "TDAS"):
  """Side-by-side grids of the same seed without and with TDAS (uint8 (N, H, W, C) each);
  `label` names the right-hand sampler."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
  for axis, images, title in ((axes[0], vanilla, "vanilla"), (axes[1], tdas, label)):
    grid = image_grid(images)
    axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
    axis.set_title(f"{title}: {steps} steps, {nfe} NFE")
    axis.axis("off")
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=150)
  plt.close(fig)
