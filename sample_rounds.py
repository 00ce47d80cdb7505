"""The round files of `--mode sample`: what each one records, which ones can be kept, who samples
which round.

A round file `<folder>/samples_<round>[_host<p>].npz` holds `samples` (uint8 NHWC, this host's
rows of the round) and `fingerprint`, a JSON object of everything that determines those rows: the
network's variables (a SHA-256 of their bytes), the model, SDE, sampler and TDAS settings, the
filters' bytes, the seed, the batch shape and the round. A rerun keeps a round only when it reads
back whole with the fingerprint of this run; a round that is damaged, lacks a fingerprint (written
before fingerprints existed) or holds too few rows is sampled again; a round with another
fingerprint stops the run (`FingerprintMismatch`) unless the caller discards such rounds. The
fingerprint also records the per-device batch (`ROUNDING_FIELDS`): it fixes the last float bits,
not the draw, so a round that differs from this run only there is kept, with a one-line notice.
A full disk ends the run with `DiskFullError`, saying how many rounds are whole.

Several processes can sample into one folder at once: each round is claimed through an exclusive
`flock` on `.samples_<round>.lock` before it is sampled, so every round is sampled by one
process. The kernel drops the lock of a process that dies, so a killed run's rounds are free
again at once; a process that found rounds held by another waits for them at the end and samples
any whose holder died without writing it.
"""
import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import socket
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np
from tqdm import tqdm

from atomic_io import atomic_savez
from errors import UnwritableError, UserError

ROUND_FILE = re.compile(r"samples_(\d+)(?:_host(\d+))?\.npz$")

# The sampling fields that do not change the samples or enter otherwise: where the checkpoint is
# found (its variables' hash is recorded), how N' is asked for (N' itself is), and TDAS's fields
# (recorded as resolved, with the filters' bytes).
_UNFINGERPRINTED_SAMPLING = ("distributed", "vanilla_comparison", "checkpoint_dir",
                             "checkpoint_step", "num_steps", "speedup", "speedup_rule", "tdas",
                             "export_arr0", "guidance")


class FingerprintMismatch(UserError):
  """Round files in the folder were sampled with other settings than this run's."""


class DiskFullError(UserError):
  """The disk (or quota) under the output files is full: what was written so far is whole."""


# errno values of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def complete_rounds(folder: str, suffix: str, num_rounds: int) -> int:
  """How many of rounds 0 .. num_rounds - 1 this host has as files in `folder` (every round file
  is written atomically, so each one present is whole)."""
  return sum(1 for r in host_round_files(folder, suffix) if r < num_rounds)


def disk_full(folder: str, suffix: str, num_rounds: int, error: OSError,
              what: str = "") -> DiskFullError:
  """The one-line DiskFullError of a full disk under `folder` while sampling."""
  done = complete_rounds(folder, suffix, num_rounds)
  where = f" while writing {what}" if what else ""
  return DiskFullError(
      f"the disk at {folder!r} is full ({error.strerror or error}{where}): {done} of "
      f"{num_rounds} rounds are written and whole, nothing partial is left; free space and rerun "
      "the same command to sample the rest.")


def round_path(folder: str, round_index: int, suffix: str = "") -> str:
  return os.path.join(folder, f"samples_{round_index}{suffix}.npz")


def _json_ready(value):
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if np.isfinite(value) else str(value)
  if isinstance(value, (tuple, list)):
    return [_json_ready(v) for v in value]
  return str(value)


def _flat_fields(section, prefix: str, skip=()) -> Dict[str, Any]:
  fields = {}
  for key, value in section.items():
    if key in skip:
      continue
    if hasattr(value, "items"):
      fields.update(_flat_fields(value, f"{prefix}{key}.", ()))
    else:
      fields[f"{prefix}{key}"] = _json_ready(value)
  return fields


def array_digest(arrays) -> str:
  """SHA-256 (hex) of a sequence of arrays' dtypes, shapes and bytes, in order."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


# Fields that fix a round's last float bits but not its draw: the batch each device computes (the
# network's forward rounds differently with the batch it is given). Rounds that differ from this
# run only in these are kept, with a notice (docs/reliability.md, "Device counts").
ROUNDING_FIELDS = ("per_device_batch_shape", "device_count")


def fingerprint(config, variables, tdas, shape, steps: int, eps: float,
                process_count: int = 1, device_count: int = 1,
                classifier_variables=None) -> Dict[str, Any]:
  """Everything that determines a round's samples, as a flat JSON-ready dict.

  Args:
    config: the run's config (its model, SDE, sampling and data fields are recorded).
    variables: the network's variables (host arrays or jax arrays): recorded by their SHA-256.
    tdas: the resolved `tdas.settings.TDAS`: its settings and the bytes of its filters.
    shape: (B, H, W, C) of one global batch.
    steps, eps: the sampler's resolved number of steps and end time.
    process_count: the number of processes sharing each round (each writes its own rows).
    device_count: the devices the global batch is split over (all processes together).
    classifier_variables: with guidance, the classifier's variables: recorded by their SHA-256,
      beside the requested labels and the scale (not the files' paths, like the checkpoint's).
  """
  leaves = jax.tree_util.tree_leaves(variables)
  fields = {"variables_sha256": array_digest(leaves)}
  fields.update(_flat_fields(config.model, "model."))
  for key in ("sde", "continuous"):
    fields[f"training.{key}"] = _json_ready(config.training.get(key))
  for key in ("image_size", "num_channels", "centered"):
    fields[f"data.{key}"] = _json_ready(config.data.get(key))
  fields.update(_flat_fields(config.sampling, "sampling.", _UNFINGERPRINTED_SAMPLING))
  for key, value in tdas.describe().items():
    if not key.endswith(("_file", "_mask")):  # where a filter came from; its bytes count
      fields[f"tdas.{key}"] = _json_ready(value)
  if tdas.enabled:
    for name in ("space", "freq", "init_mean"):
      array = getattr(tdas, name)
      fields[f"tdas.{name}_sha256"] = None if array is None else array_digest([array])
  if classifier_variables is not None:
    # Guidance: what is asked for and the classifier's weights (not where its files are).
    guidance = config.sampling.guidance
    fields["guidance.labels"] = str(guidance.labels).strip()
    fields["guidance.scale"] = float(guidance.scale)
    fields["guidance.classifier_sha256"] = array_digest(
        jax.tree_util.tree_leaves(classifier_variables))
  fields.update({"batch_shape": [int(s) for s in shape], "steps": int(steps),
                 "eps": float(eps), "process_count": int(process_count),
                 "device_count": int(device_count),
                 "per_device_batch_shape": [int(shape[0]) // int(device_count)]
                                           + [int(s) for s in shape[1:]]})
  return fields


def setting_differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """`differences` in the fields that change the draw (all but ROUNDING_FIELDS and the round)."""
  skip = ROUNDING_FIELDS + ("round",)
  return differences({k: v for k, v in recorded.items() if k not in skip},
                     {k: v for k, v in current.items() if k not in skip})


def rounding_note(recorded: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
  """'per-device batch A (n devices) -> B (m devices)' when a round was computed with another
  per-device batch than this run (or before fingerprints recorded it), else None."""
  before = recorded.get("per_device_batch_shape")
  if before == current.get("per_device_batch_shape"):
    return None
  was = "unrecorded" if before is None else f"{before} ({recorded.get('device_count')} devices)"
  return (f"per-device batch {was} -> {current.get('per_device_batch_shape')} "
          f"({current.get('device_count')} devices)")


def differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """'field: recorded -> current' for every field that differs (missing fields show as None)."""
  lines = []
  for key in sorted(set(recorded) | set(current)):
    if recorded.get(key) != current.get(key):
      lines.append(f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}")
  return lines


def read_round(path: str, rows: Optional[int] = None):
  """(samples, fingerprint dict or None, problem or None) of one round file.

  `problem` says why the file cannot be kept as it is: unreadable, no `samples`, fewer than
  `rows` rows. A file without a fingerprint reads with fingerprint None and no problem.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      samples = data["samples"]
      recorded = json.loads(str(data["fingerprint"])) if "fingerprint" in data.files else None
  except Exception as e:  # pylint: disable=broad-except
    return None, None, f"it does not read back ({type(e).__name__}: {e})"
  if samples.dtype != np.uint8 or samples.ndim != 4:
    return None, recorded, f"its samples are {samples.dtype} {samples.shape}"
  if rows is not None and samples.shape[0] != rows:
    return samples, recorded, f"it holds {samples.shape[0]} rows, this run needs {rows}"
  return samples, recorded, None


def read_fingerprint(path: str) -> Optional[Dict[str, Any]]:
  """The fingerprint a sample file records, or None (no fingerprint, or not our file)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      if "fingerprint" not in data.files:
        return None
      recorded = json.loads(str(data["fingerprint"]))
  except Exception:  # pylint: disable=broad-except
    return None
  return recorded if isinstance(recorded, dict) else None


def write_round(path: str, samples, fields: Dict[str, Any], round_index: int):
  """Writes one round atomically with its fingerprint (and round number).

  `samples` is the uint8 array (n, H, W, C), or a dict of it under `samples` with other per-row
  arrays beside it (class-conditional rounds add `labels` (n,))."""
  arrays = dict(samples) if isinstance(samples, dict) else dict(samples=samples)
  recorded = dict(fields, round=int(round_index))
  atomic_savez(path, **arrays, fingerprint=np.asarray(json.dumps(recorded, sort_keys=True)))


def host_round_files(folder: str, suffix: str) -> Dict[int, str]:
  """{round: path} of this host's round files in `folder`."""
  found = {}
  for path in glob.glob(os.path.join(folder, "samples_*.npz")):
    match = ROUND_FILE.search(os.path.basename(path))
    if match is None:
      continue
    host = "" if match.group(2) is None else f"_host{match.group(2)}"
    if host == suffix:
      found[int(match.group(1))] = path
  return found


def check_folder(folder: str, suffix: str, fields: Dict[str, Any], discard: bool,
                 log=None) -> List[int]:
  """Checks this host's existing rounds against this run's fingerprint before any sampling.

  Rounds recorded with another fingerprint raise FingerprintMismatch listing the fields that
  differ, or, with `discard`, are deleted (their numbers are returned). Rounds without a
  fingerprint or damaged are left for the sampling loop to replace.
  """
  mismatched, first_differences, other_batch, note = [], None, [], None
  for round_index, path in sorted(host_round_files(folder, suffix).items()):
    recorded = read_fingerprint(path)
    if recorded is None:
      continue
    lines = setting_differences(recorded, fields)
    if lines:
      mismatched.append(round_index)
      first_differences = first_differences or lines
    elif rounding_note(recorded, fields):
      other_batch.append(round_index)
      note = note or rounding_note(recorded, fields)
  if other_batch and log is not None:
    log(f"Keeping {len(other_batch)} round(s) of {folder} (samples_{other_batch[0]}{suffix}.npz, "
        f"...) sampled with another per-device batch ({note}): the same draws, equal to this "
        "run's up to float rounding (docs/reliability.md, 'Device counts').")
  if not mismatched:
    return []
  if not discard:
    shown = "; ".join(first_differences[:6])
    more = f"; +{len(first_differences) - 6} more" if len(first_differences) > 6 else ""
    raise FingerprintMismatch(
        f"{folder} holds {len(mismatched)} round(s) (samples_{mismatched[0]}{suffix}.npz, ...) "
        f"sampled with other settings than this run ({shown}{more}): sample into another "
        "folder (--eval_folder=NAME), or rerun with --discard_rounds to delete those rounds and "
        "sample them again.")
  for round_index in mismatched:
    os.remove(round_path(folder, round_index, suffix))
  if log is not None:
    log(f"Discarded {len(mismatched)} round(s) of {folder} sampled with other settings.")
  return mismatched


class RoundClaims:
  """Exclusive claims on rounds of one folder, shared by every process that samples into it.

  `claim(path)` returns a held claim (a context manager) or None when a live process holds the
  round; `claim(path, block=True)` waits until the round is free and then holds it.
  """

  def __init__(self, folder: str):
    self.folder = folder

  def _lock_path(self, path: str) -> str:
    return os.path.join(self.folder, "." + os.path.basename(path)[:-len(".npz")] + ".lock")

  @contextlib.contextmanager
  def _held(self, handle, lock_path):
    try:
      os.ftruncate(handle, 0)
      os.write(handle, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
      yield
    finally:
      with contextlib.suppress(OSError):
        os.remove(lock_path)
      fcntl.flock(handle, fcntl.LOCK_UN)
      os.close(handle)

  def claim(self, path: str, block: bool = False):
    """A claim on the round of `path`, or None when another live process holds it."""
    lock_path = self._lock_path(path)
    while True:
      handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
      except OSError as e:
        os.close(handle)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          return None
        raise
      # The holder before us may have removed the lock file after we opened it: then our lock
      # is on a file no one else sees; take the one at the path instead.
      try:
        same = os.stat(lock_path).st_ino == os.fstat(handle).st_ino
      except FileNotFoundError:
        same = False
      if same:
        return self._held(handle, lock_path)
      fcntl.flock(handle, fcntl.LOCK_UN)
      os.close(handle)

  def holder(self, path: str) -> str:
    """Who holds the round (the lock file's text), for the log."""
    try:
      with open(self._lock_path(path)) as f:
        return f.read().strip() or "another process"
    except OSError:
      return "another process"


def check_writable(folder: str):
  """Raises UnwritableError naming `folder` when files cannot be created in it."""
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    if is_disk_full(e):
      raise  # the caller says how much is written
    raise UnwritableError(f"Cannot write into {folder!r} ({e.strerror or e}): choose a "
                         "writable --workdir / --eval_folder.") from e


def round_problem(path: str, fields: Dict[str, Any], round_index: int, rows: int):
  """Why the round file at `path` must be sampled (again), or None when it can be kept.

  Raises FingerprintMismatch when it reads back whole but with other settings (written by
  another process after this run checked the folder).
  """
  if not os.path.exists(path):
    return "missing"
  samples, recorded, problem = read_round(path, rows)
  if problem is None and recorded is None:
    problem = "it has no fingerprint (written by an older version)"
  if problem is None:
    lines = setting_differences(recorded, fields)
    if recorded.get("round") != round_index:
      lines.append(f"round: {recorded.get('round')!r} -> {round_index!r}")
    if lines:
      raise FingerprintMismatch(
          f"{path} was written during this run with other settings ({'; '.join(lines[:4])}) "
          "by another process: give each setting its own --eval_folder.")
  return problem


def sample_missing(folder: str, suffix: str, fields: Dict[str, Any], num_rounds: int,
                  rows_of: Callable[[int], int], draw: Callable[[int], np.ndarray],
                  shared_job: bool, every_process: Callable[[bool], bool], log) -> int:
  """Samples every round of `folder` that is not finished; returns how many it sampled.

  Args:
    folder, suffix: the round files `samples_<r><suffix>.npz`.
    fields: this run's fingerprint.
    num_rounds: rounds 0 .. num_rounds - 1.
    rows_of: round -> the rows this process keeps of it.
    draw: round -> its uint8 samples (this process's rows), computed by the caller.
    shared_job: the processes of one jax.distributed job: they decide each round together
      (`every_process(done)` is a collective) and claim nothing.
    log: (level, message) for what happens to each round.
  """
  try:
    return _sample_missing(folder, suffix, fields, num_rounds, rows_of, draw, shared_job,
                           every_process, log)
  except OSError as error:
    if not is_disk_full(error):
      raise
    raise disk_full(folder, suffix, num_rounds, error) from error


def _sample_missing(folder, suffix, fields, num_rounds, rows_of, draw, shared_job, every_process,
                    log) -> int:
  sampled = 0

  def sample(r, path):
    nonlocal sampled
    write_round(path, draw(r), fields, r)
    sampled += 1

  rounds = tqdm(range(num_rounds), desc="rounds", unit="round")
  if shared_job:
    for r in rounds:
      path = round_path(folder, r, suffix)
      if not every_process(round_problem(path, fields, r, rows_of(r)) is None):
        sample(r, path)
    return sampled

  claims, held = RoundClaims(folder), []
  for r in rounds:
    path = round_path(folder, r, suffix)
    problem = round_problem(path, fields, r, rows_of(r))
    if problem is None:
      log("info", f"Round {r} already written ({path}); keeping it.")
      continue
    if problem != "missing":
      log("warning", f"Round {r} ({path}): {problem}; sampling it again.")
    claim = claims.claim(path)
    if claim is None:
      log("info", f"Round {r} is being sampled by {claims.holder(path)}; taking the next.")
      held.append(r)
      continue
    with claim:  # finished by another process between the check and the claim?
      if round_problem(path, fields, r, rows_of(r)) is not None:
        sample(r, path)
  for r in held:  # wait for the other process; sample the round if it died without writing it
    path = round_path(folder, r, suffix)
    with claims.claim(path, block=True):
      if round_problem(path, fields, r, rows_of(r)) is not None:
        sample(r, path)
  return sampled
