"""Atomic writes: whole files only, normal permissions, nothing left behind on failure."""
import os
import stat

import numpy as np
import pytest

import atomic_io


def test_files_get_the_umask_permissions_and_replace_atomically(tmp_path):
  path = tmp_path / "sub" / "out.npz"
  atomic_io.atomic_savez(str(path), samples=np.arange(3))
  old = os.umask(0o022)
  os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~old
  atomic_io.atomic_savez(str(path), samples=np.arange(5))
  assert np.load(path)["samples"].shape == (5,)
  assert os.listdir(tmp_path / "sub") == ["out.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "metrics.json"
  atomic_io.atomic_write_text(str(path), '{"fid": 1.0}')
  with pytest.raises(RuntimeError):
    with atomic_io.atomic_write(str(path), "w") as f:
      f.write('{"fid": ')
      raise RuntimeError("killed mid-write")
  assert path.read_text() == '{"fid": 1.0}'
  assert os.listdir(tmp_path) == ["metrics.json"]
