"""PyTorch weight files (`torch.save` output) read and written without PyTorch.

The one reader for every PyTorch file this project touches (score_sde_pytorch checkpoints, the FID
Inception weights). Tensors come back as numpy arrays; dicts, `OrderedDict`s, lists, tuples and
Python scalars come back as they are.

Two serialisations exist and both are supported:

- **zip** (PyTorch >= 1.6, the default since): a zip archive whose entries all sit under one folder
  `<name>/`: `data.pkl` is the pickled object in which each tensor refers to its storage through a
  persistent id `('storage', torch.<Type>Storage, key, location, numel)`; the storage's raw bytes
  are the entry `data/<key>`; `byteorder` ('little' or 'big', little when absent) says how they are
  laid out. Newer writers add `version`, `.format_version`, `.storage_alignment` and
  `.data/serialization_id`, which the reader does not need.
- **legacy** (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`): one stream of pickles —
  the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a dict of system
  information, the object itself (persistent ids `('storage', torch.<Type>Storage, key, location,
  numel, view)` with `view` None or `(view_key, offset, numel)`), the list of storage keys — then,
  for each key in that order, the storage: its element count as a little-endian int64 followed by
  its elements, little-endian.

A tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)`: the array of shape `size` whose element [i, j, ...] is
`storage[offset + i·stride[0] + j·stride[1] + ...]`.

Unpickling is restricted: only the globals a weight file needs (tensor and parameter rebuilders,
typed storages, `collections.OrderedDict`, `torch.Size`) are accepted; any other global is refused
with an error naming the file, so loading a file never runs code from it.
"""
import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Tuple

import numpy as np

import atomic_io
from errors import MissingFileError, UserError
MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001
_PICKLE_PROTOCOL = 2  # what torch.save uses
_ZIP_ALIGNMENT = 64  # PyTorch aligns each record's data to 64 bytes
_ZIP_MAGIC = b"PK\x03\x04"


class PyTorchFileError(UserError):
  """A file that is not a readable PyTorch file (or holds something this reader refuses)."""


# torch.<Name>Storage -> numpy dtype of its elements (little-endian; byte order applied on read).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits; widened to float32 when a tensor is built
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
    "UntypedStorage": np.dtype("u1"),
}
# numpy dtype -> storage name used when writing.
_WRITE_STORAGE = {
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
    np.dtype("complex64"): "ComplexFloatStorage",
    np.dtype("complex128"): "ComplexDoubleStorage",
}


# ----------------------------------------------------------------------------------------------
# Reading


class _StorageType:
  """Stands for the class `torch.<name>` while unpickling; knows its element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]

  def __repr__(self):
    return f"torch.{self.name}"


class _Storage:
  """One serialised storage: `numel` elements of `dtype`, filled with `data` (1-D) once read.

  A legacy view shares its root's data from element `offset` on.
  """

  def __init__(self, storage_type: _StorageType, numel: int, root=None, offset: int = 0):
    self.storage_type = storage_type
    self.numel = int(numel)
    self.root = root
    self.offset = int(offset)
    self._data = None

  @property
  def data(self) -> np.ndarray:
    if self.root is not None:
      return self.root.data[self.offset:self.offset + self.numel]
    return self._data

  def fill(self, data: np.ndarray):
    self._data = data


class _PendingTensor:
  """A tensor whose storage may not be read yet: `storage`, element `offset`, `shape`, `stride`."""

  def __init__(self, storage, offset, shape, stride):
    self.storage, self.offset = storage, int(offset)
    self.shape, self.stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd state means nothing to numpy
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


def _torch_size(dims=()):
  return tuple(dims)


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): _torch_size,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
_ALLOWED_GLOBALS[("torch.storage", "UntypedStorage")] = _ALLOWED_GLOBALS["torch", "UntypedStorage"]


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only `_ALLOWED_GLOBALS` and hands persistent ids to a callback."""

  def __init__(self, file, path: str, persistent_load=None):
    super().__init__(file)
    self._path = path
    self._persistent_load = persistent_load

  def find_class(self, module, name):
    found = _ALLOWED_GLOBALS.get((module, name))
    if found is None:
      raise PyTorchFileError(
          f"{self._path!r} asks for the Python object {module}.{name}; only tensors, storages, "
          "OrderedDict and plain Python values are accepted from a PyTorch weight file, so it "
          "was not loaded.")
    return found

  def persistent_load(self, pid):
    if self._persistent_load is None:
      raise PyTorchFileError(f"{self._path!r}: unexpected storage reference {pid!r} in a header "
                             "pickle.")
    return self._persistent_load(pid)


def _storage_type(pid, path) -> _StorageType:
  storage_type = pid[1] if len(pid) > 1 else None
  if not isinstance(storage_type, _StorageType):
    raise PyTorchFileError(f"{path!r}: storage reference {pid!r} names no known storage type.")
  return storage_type


def _check_pid(pid, length: int, path: str):
  if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
    raise PyTorchFileError(f"{path!r}: unexpected persistent id {pid!r} (expected a "
                           f"{length}-tuple ('storage', ...)).")


def _materialize(tensor: _PendingTensor, path: str) -> np.ndarray:
  """The numpy array (C-contiguous copy, native byte order) that `tensor` describes."""
  storage = tensor.storage
  data = storage.data
  if data is None:
    raise PyTorchFileError(f"{path!r}: a tensor refers to a storage that the file never holds.")
  dtype = data.dtype.newbyteorder("=")
  shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
  if len(shape) != len(stride) or any(s < 0 for s in shape) or any(s < 0 for s in stride):
    raise PyTorchFileError(f"{path!r}: tensor with size {shape} and stride {stride} is invalid.")
  if 0 in shape:
    array = np.zeros(shape, dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if offset < 0 or last >= data.size:
      raise PyTorchFileError(
          f"{path!r}: tensor of size {shape} (offset {offset}, stride {stride}) reaches past its "
          f"storage of {data.size} elements (truncated file?).")
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=shape, strides=tuple(s * data.itemsize for s in stride),
        writeable=False)
    array = np.array(view, dtype=dtype)
  if storage.storage_type.name == "BFloat16Storage":
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


def _resolve(obj, path: str, seen: Dict[int, Any]):
  """Replaces every `_PendingTensor` inside dicts / lists / tuples by its numpy array."""
  key = id(obj)
  if key in seen:
    return seen[key]
  if isinstance(obj, _PendingTensor):
    result = _materialize(obj, path)
  elif isinstance(obj, dict):
    seen[key] = obj
    for k in list(obj):
      obj[k] = _resolve(obj[k], path, seen)
    for k, v in list(vars(obj).items()) if hasattr(obj, "__dict__") else ():
      setattr(obj, k, _resolve(v, path, seen))
    result = obj
  elif isinstance(obj, list):
    seen[key] = obj
    obj[:] = [_resolve(v, path, seen) for v in obj]
    result = obj
  elif isinstance(obj, tuple):
    result = tuple(_resolve(v, path, seen) for v in obj)
  else:
    result = obj
  seen[key] = result
  return result


def _load_zip(path: str, archive: zipfile.ZipFile):
  names = archive.namelist()
  pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
  pickles = [n for n in pickles if n.count("/") <= 1]
  if len(pickles) != 1:
    raise PyTorchFileError(
        f"{path!r} is a zip archive but not a PyTorch file: it has {len(pickles)} top-level "
        f"'data.pkl' entries (PyTorch writes exactly one, '<name>/data.pkl').")
  prefix = pickles[0][:-len("data.pkl")]
  byteorder = "little"
  if prefix + "byteorder" in names:
    byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise PyTorchFileError(f"{path!r}: unknown byteorder record {byteorder!r}.")
  order = "<" if byteorder == "little" else ">"
  storages = {}

  def persistent_load(pid):
    _check_pid(pid, 5, path)
    storage_type = _storage_type(pid, path)
    key, numel = str(pid[2]), int(pid[4])
    if key not in storages:
      entry = f"{prefix}data/{key}"
      try:
        raw = archive.read(entry)
      except KeyError:
        raise PyTorchFileError(f"{path!r}: the archive lacks the storage record {entry!r} "
                               "(truncated or damaged file?).") from None
      dtype = storage_type.dtype.newbyteorder(order)
      if len(raw) < numel * dtype.itemsize:
        raise PyTorchFileError(f"{path!r}: storage record {entry!r} holds {len(raw)} bytes, "
                               f"{numel} × {dtype.itemsize} expected.")
      storage = _Storage(storage_type, numel)
      storage.fill(np.frombuffer(raw, dtype=dtype, count=numel))
      storages[key] = storage
    return storages[key]

  with archive.open(pickles[0]) as f:
    obj = _RestrictedUnpickler(io.BytesIO(f.read()), path, persistent_load).load()
  return _resolve(obj, path, {})


def _load_legacy(path: str, raw: bytes):
  stream = io.BytesIO(raw)

  def header():
    return _RestrictedUnpickler(stream, path).load()

  try:
    magic = header()
  except Exception as e:  # pylint: disable=broad-except
    raise PyTorchFileError(
        f"{path!r} is neither a zip archive nor a legacy PyTorch stream (it does not start with "
        f"a pickle: {type(e).__name__}: {e}); is it a PyTorch file at all?") from e
  if magic != MAGIC_NUMBER:
    raise PyTorchFileError(f"{path!r} starts with a pickle of {type(magic).__name__}, not the "
                           "PyTorch magic number: it is not a PyTorch file.")
  protocol = header()
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise PyTorchFileError(f"{path!r}: legacy protocol version {protocol!r} is not supported "
                           f"(only {LEGACY_PROTOCOL_VERSION}).")
  sys_info = header()
  if not isinstance(sys_info, dict):
    raise PyTorchFileError(f"{path!r}: malformed legacy header (system info is "
                           f"{type(sys_info).__name__}).")

  storages = {}

  def persistent_load(pid):
    _check_pid(pid, 6, path)
    storage_type = _storage_type(pid, path)
    root_key, numel, view = str(pid[2]), int(pid[4]), pid[5]
    if root_key not in storages:
      storages[root_key] = _Storage(storage_type, numel)
    root = storages[root_key]
    if view is None:
      return root
    view_key, offset, view_numel = view
    view_key = str(view_key)
    if view_key not in storages:
      storages[view_key] = _Storage(storage_type, view_numel, root=root, offset=offset)
    return storages[view_key]

  obj = _RestrictedUnpickler(stream, path, persistent_load).load()
  keys = header()
  if not isinstance(keys, list):
    raise PyTorchFileError(f"{path!r}: malformed legacy file (storage key list is "
                           f"{type(keys).__name__}).")
  for key in keys:
    key = str(key)
    storage = storages.get(key)
    if storage is None or storage.root is not None:
      raise PyTorchFileError(f"{path!r}: storage {key!r} is listed but never referenced.")
    size = stream.read(8)
    if len(size) != 8:
      raise PyTorchFileError(f"{path!r} ends before storage {key!r} (truncated file?).")
    (numel,) = struct.unpack("<q", size)
    dtype = storage.storage_type.dtype
    nbytes = numel * dtype.itemsize
    data = stream.read(nbytes)
    if numel != storage.numel:
      raise PyTorchFileError(f"{path!r}: storage {key!r} is stored with {numel} elements but its "
                             f"tensors need {storage.numel} (damaged file?).")
    if len(data) != nbytes:
      raise PyTorchFileError(f"{path!r} ends inside storage {key!r} ({len(data)} of {nbytes} "
                             "bytes): the file is truncated.")
    storage.fill(np.frombuffer(data, dtype=dtype))
  return _resolve(obj, path, {})


def load(path: str):
  """Reads a `torch.save` file (zip or legacy serialisation) without PyTorch.

  Args:
    path: the file.
  Returns:
    The saved object, with every tensor replaced by a numpy array (its shape, dtype and values;
    bfloat16 becomes float32).
  Raises:
    FileNotFoundError: no such file.
    PyTorchFileError (a ValueError): the file is not a readable PyTorch file — truncated, another
      format, or it asks for a Python global other than tensors/storages/OrderedDict. The message
      names `path`.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"PyTorch file {path!r} does not exist (or is not a file).")
  size = os.path.getsize(path)
  if size == 0:
    raise PyTorchFileError(f"PyTorch file {path!r} is empty.")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:  # records are read one by one, not all at once
        return _load_zip(path, archive)
    with open(path, "rb") as f:
      raw = f.read()
    if raw.startswith(_ZIP_MAGIC):
      raise PyTorchFileError(f"{path!r} starts like a zip archive but has no readable central "
                             "directory: the file is truncated or damaged.")
    return _load_legacy(path, raw)
  except PyTorchFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # zipfile, zlib, pickle and struct raise many unrelated types for damaged input.
    raise PyTorchFileError(f"{path!r} ({size} bytes) is not a readable PyTorch file "
                           f"(truncated or damaged?): {type(e).__name__}: {e}") from e


def looks_like_pytorch_file(path: str) -> bool:
  """Whether `path` starts like a `torch.save` file (a zip archive or a protocol-2 pickle).

  A cheap sniff for choosing a loader; `load` does the real checking.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError:
    return False
  return head.startswith(_ZIP_MAGIC) or head[:2] == b"\x80\x02"


# ----------------------------------------------------------------------------------------------
# Writing


class _Global:
  """A stand-in pickled as the global `module.name` (e.g. torch._utils._rebuild_tensor_v2)."""
  _instances: Dict[Tuple[str, str], "_Global"] = {}

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires the reduce function to be callable
    raise TypeError(f"{self.module}.{self.name} is only a pickling stand-in.")

  @classmethod
  def get(cls, module, name):
    key = (module, name)
    if key not in cls._instances:
      cls._instances[key] = cls(module, name)
    return cls._instances[key]


class _StorageOut:
  """A storage to write: the flattened C-order bytes of one array, under key `key`."""

  def __init__(self, array: np.ndarray, key: str):
    self.array, self.key = array, key
    self.type_name = _WRITE_STORAGE[array.dtype]


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pure-Python pickler (protocol 2) writing numpy arrays as PyTorch tensors.

  The pure-Python pickler is used because the globals it writes (`torch.FloatStorage`, ...) must
  not be importable here; `save` writes them directly.
  """

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=_PICKLE_PROTOCOL)
    self.legacy = legacy
    self.storages = []  # in order of first reference; keys '0', '1', ...
    self._keep_alive = []  # ids of temporary objects must stay unique while pickling

  def persistent_id(self, obj):
    if not isinstance(obj, _StorageOut):
      return None
    storage_type = _Global.get("torch", obj.type_name)
    if self.legacy:
      return ("storage", storage_type, obj.key, "cpu", obj.array.size, None)
    return ("storage", storage_type, obj.key, "cpu", obj.array.size)

  def reducer_override(self, obj):
    if not isinstance(obj, np.ndarray):
      return NotImplemented
    array = np.ascontiguousarray(obj)
    if array.dtype not in _WRITE_STORAGE:
      raise PyTorchFileError(f"Cannot write an array of dtype {array.dtype} as a PyTorch tensor.")
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    storage = _StorageOut(array, str(len(self.storages)))
    self.storages.append(storage)
    stride, step = [], 1
    for n in reversed(array.shape):
      stride.insert(0, step)
      step *= n
    hooks = collections.OrderedDict()
    self._keep_alive.extend([storage, hooks])
    return (_Global.get("torch._utils", "_rebuild_tensor_v2"),
            (storage, 0, tuple(array.shape), tuple(stride), False, hooks))

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      memoized = self.memo.get(id(obj))
      if memoized is not None:
        self.write(self.get(memoized[0]))
        return
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
      self.memoize(obj)
      return
    super().save(obj, save_persistent_id)


def _plain(obj, where="obj"):
  """A copy of `obj` holding only what `save` writes: containers, scalars, numpy arrays."""
  if isinstance(obj, np.ndarray):
    return obj
  if isinstance(obj, (bool, int, float, str, bytes, type(None))):
    return obj
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, collections.OrderedDict):
    copy = collections.OrderedDict((k, _plain(v, f"{where}[{k!r}]")) for k, v in obj.items())
    copy.__dict__.update({k: _plain(v, f"{where}.{k}") for k, v in vars(obj).items()})
    return copy
  if isinstance(obj, dict):
    return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
  if isinstance(obj, list):
    return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
  if isinstance(obj, tuple):
    return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
  if hasattr(obj, "__array__") and hasattr(obj, "shape"):  # e.g. a jax.Array
    return np.asarray(obj)
  raise PyTorchFileError(f"Cannot write {where} of type {type(obj).__name__} to a PyTorch file "
                         "(only dicts, lists, tuples, scalars, strings and arrays).")


def _pickle(obj, legacy: bool):
  buffer = io.BytesIO()
  pickler = _TorchPickler(buffer, legacy)
  pickler.dump(obj)
  return buffer.getvalue(), pickler.storages


def _atomic_write(path: str, write):
  with atomic_io.atomic_write(path) as f:
    write(f)


def _write_zip_records(f, archive_name: str, records):
  """Writes (name, bytes) records, uncompressed, each one's data aligned to 64 bytes."""
  with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
    for name, data in records:
      info = zipfile.ZipInfo(f"{archive_name}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_STORED
      start = f.tell() + 30 + len(info.filename.encode("utf-8")) + 4
      padding = (-start) % _ZIP_ALIGNMENT
      info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding  # PyTorch's pad field
      archive.writestr(info, data)


def save(obj, path: str, legacy: bool = False) -> None:
  """Writes `obj` as `torch.save` would, numpy arrays (and jax arrays) becoming tensors.

  Args:
    obj: dicts / OrderedDicts (with their attributes, e.g. a state dict's `_metadata`), lists,
      tuples, Python scalars, strings and arrays of bool, (u)int8, int16/32/64, float16/32/64 or
      complex64/128. Every array gets its own storage.
    path: output file; written atomically (a temporary file renamed into place).
    legacy: write the pre-1.6 single-stream format instead of the zip archive.
  """
  data_pkl, storages = _pickle(_plain(obj), legacy)

  if legacy:
    def write(f):
      for header in (MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                     dict(protocol_version=LEGACY_PROTOCOL_VERSION, little_endian=True,
                          type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(header, f, protocol=_PICKLE_PROTOCOL)
      f.write(data_pkl)
      by_key = {s.key: s for s in storages}
      keys = sorted(by_key)  # PyTorch writes the storages sorted by key
      pickle.dump(keys, f, protocol=_PICKLE_PROTOCOL)
      for key in keys:
        f.write(struct.pack("<q", by_key[key].array.size))
        f.write(by_key[key].array.tobytes())
  else:
    archive_name = os.path.splitext(os.path.basename(path))[0] or "archive"
    serialization_id = str(int(hashlib.sha1(data_pkl).hexdigest(), 16))[:40].rjust(40, "0")
    records = [("data.pkl", data_pkl), (".format_version", b"1"),
               (".storage_alignment", str(_ZIP_ALIGNMENT).encode()),
               ("byteorder", b"little")]
    records += [(f"data/{s.key}", s.array.tobytes()) for s in storages]
    records += [("version", b"3\n"), (".data/serialization_id", serialization_id.encode())]

    def write(f):
      _write_zip_records(f, archive_name, records)

  _atomic_write(path, write)

