"""Atomic file writes: a reader sees the old file or the whole new one, never a partial file.

Every output of the project (sample rounds, metrics, filters, statistics, converted weights) is
written through `atomic_write`: into a temporary file beside the target, made readable as a
normal file would be (the process umask), then renamed over the target. A failed write leaves
nothing behind.
"""
import contextlib
import os
import tempfile

import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
  """Context manager yielding a file object; on success the file replaces `path` at once."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                       suffix=".tmp")
  try:
    with os.fdopen(handle, mode) as f:
      yield f
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's file is private; the result is not
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def atomic_savez(path: str, compressed: bool = True, **arrays) -> str:
  """Writes arrays to an `.npz` atomically. Returns `path`."""
  with atomic_write(path) as f:
    (np.savez_compressed if compressed else np.savez)(f, **arrays)
  return path


def atomic_savefig(figure, path: str, **options) -> str:
  """Saves a matplotlib figure atomically (PNG unless `format` says otherwise). Returns `path`."""
  options.setdefault("format", os.path.splitext(path)[1].lstrip(".") or "png")
  with atomic_write(path) as f:
    figure.savefig(f, **options)
  return path


def atomic_write_text(path: str, text: str) -> str:
  """Writes text atomically. Returns `path`."""
  with atomic_write(path, "w") as f:
    f.write(text)
  return path
