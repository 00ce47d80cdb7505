"""The FID Inception-v3 (TF graph of 2015-12-05) as a Flax module, its weights, and batched features.

The network is the one every FID number in the literature is computed with: the TensorFlow
Inception-v3 graph `2015-12-05`, as ported to PyTorch by pytorch-fid (torchvision's Inception3
layout with 1008 classes and no auxiliary head). Its departures from torchvision's Inception-v3:

- the pooling branch of the A (Mixed_5b..d), C (Mixed_6b..e) and first E (Mixed_7b) blocks averages
  over a 3×3 window, stride 1, padding 1, **excluding** the padded zeros from each average
  (TensorFlow's average pool); the last E block (Mixed_7c) takes a 3×3 **max** pool instead;
- the classifier has 1008 outputs (the graph's `softmax/logits`), not 1000.

Every convolution has no bias and is followed by batch norm (epsilon 0.001, running statistics:
inference only) and ReLU. Inputs are NHWC images with values in [0, 255], scaled here to [-1, 1]
as pytorch-fid does (x / 255, then 2x - 1) or, as an option, as the TensorFlow graph itself does
((x - 128) / 128, which clean-fid keeps). At 299×299 the spatial sizes run
299 → 149 → 147 → 147 → 73 (max pool) → 73 → 71 → 35 (max pool) → 35 (Mixed_5*) → 17 (Mixed_6*)
→ 8 (Mixed_7*) → global average: the 2048-d `pool_3` features.

Weights: the pytorch-fid file `pt_inception-2015-12-05-6726825d.pth` (a plain state dict in
PyTorch's legacy serialisation, read by `pytorch_io` without PyTorch), or an `.npz` of the same
names made once by `python -m tools.convert_inception`. Nothing is downloaded.
"""
import concurrent.futures
import functools
import hashlib
import os
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import pytorch_io
from errors import MissingFileError, UserError

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "TDAS_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPSILON = 1e-3
MIN_INPUT_SIZE = 75  # smallest input whose Mixed_7a output is still 1×1
RESIZE_MODES = ("clean", "tf_legacy", "pytorch_bilinear")
INPUT_SCALINGS = ("pytorch_fid", "tensorflow", "none")
# The input scaling of the tool whose resize each mode reproduces: clean-fid (both modes) feeds
# (x - 128) / 128 as the TensorFlow graph does; pytorch-fid feeds 2 (x / 255) - 1.
SCALING_OF_RESIZE = {"clean": "tensorflow", "tf_legacy": "tensorflow",
                     "pytorch_bilinear": "pytorch_fid"}

_PRECISIONS = {"default": jax.lax.Precision.DEFAULT, "high": jax.lax.Precision.HIGH,
               "highest": jax.lax.Precision.HIGHEST}


class InceptionWeightsNotFound(MissingFileError):
  """The Inception weight file is not where the config / environment says (or nowhere)."""


class InceptionWeightsError(UserError):
  """The Inception weight file exists but is not the FID Inception's weights (or is damaged)."""


# ----------------------------------------------------------------------------------------------
# The network


def _pair(value) -> Tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def scale_input(x, scaling: str = "pytorch_fid"):
  """Pixel values [0, 255] -> the network's input range, about [-1, 1].

  'pytorch_fid': 2 (x / 255) - 1 (pytorch-fid's `normalize_input`; 0 -> -1, 255 -> 1);
  'tensorflow': (x - 128) / 128 (the 2015-12-05 graph's own Sub/Mul, used by the TensorFlow FID
  code and clean-fid; 0 -> -1, 255 -> 0.9921875); 'none': x is already scaled.
  """
  if scaling == "pytorch_fid":
    return 2.0 * (x / 255.0) - 1.0
  if scaling == "tensorflow":
    return (x - 128.0) / 128.0
  if scaling == "none":
    return x
  raise UserError(f"Unknown input scaling {scaling!r}; expected one of {INPUT_SCALINGS} "
                   "(config.eval.input_scaling).")


class BasicConv(nn.Module):
  """Conv (no bias) → batch norm (eps 0.001, running statistics) → ReLU; PyTorch's BasicConv2d.

  (N, H, W, C_in) -> (N, H', W', features); `padding` is symmetric per axis, as in PyTorch.
  """
  features: int
  kernel_size: Any
  strides: Any = 1
  padding: Any = 0
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def avg_pool_3x3_exclude_pad(x):
  """3×3 average, stride 1, padding 1, each mean over the window's in-image pixels only.

  (N, H, W, C) -> (N, H, W, C); TensorFlow's AvgPool (PyTorch: count_include_pad=False).
  """
  height, width = x.shape[1], x.shape[2]
  total = jax.lax.reduce_window(x, jnp.array(0, x.dtype), jax.lax.add, (1, 3, 3, 1),
                                (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Pixels of the window inside the image: 3 inside, 2 on a border row/column, per axis.
  rows = np.full(height, 3.0)
  rows[0] -= 1
  rows[-1] -= 1
  cols = np.full(width, 3.0)
  cols[0] -= 1
  cols[-1] -= 1
  if height == 1:
    rows[:] = 1
  if width == 1:
    cols[:] = 1
  counts = np.outer(rows, cols).astype(np.float32)
  return total / counts[None, :, :, None]


def max_pool_3x3(x, strides=2, padding=0):
  """3×3 max pool; (N, H, W, C) -> (N, H', W', C). Padding (if any) never wins the max."""
  return nn.max_pool(x, (3, 3), strides=_pair(strides),
                     padding=((padding, padding), (padding, padding)))


class FIDInceptionA(nn.Module):
  """Mixed_5b/c/d: (N, 35, 35, C) -> (N, 35, 35, 224 + pool_features)."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(48, 1, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): (N, 35, 35, 288) -> (N, 17, 17, 768)."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b/c/d/e (factorised 7×7): (N, 17, 17, 768) -> (N, 17, 17, 768)."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c7, 1, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): (N, 17, 17, 768) -> (N, 8, 8, 1280)."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(192, 1, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (`pool='avg'`, padding excluded) / Mixed_7c (`pool='max'`): (N, 8, 8, C) ->
  (N, 8, 8, 2048)."""
  pool: str = "avg"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = avg_pool_3x3_exclude_pad(x)
    elif self.pool == "max":
      pooled = max_pool_3x3(x, strides=1, padding=1)
    else:
      raise UserError(f"FIDInceptionE.pool must be 'avg' or 'max', got {self.pool!r}.")
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Logits(nn.Module):
  """The 1008-way classifier `fc` (nn.Dense's variable names `kernel` (2048, 1008), `bias`).

  (N, 2048) -> (logits (N, 1008), logits without the bias (N, 1008)); the second is what the
  original Inception Score code and torch-fidelity take the softmax of.
  """
  features: int = NUM_CLASSES
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    unbiased = jnp.dot(x, kernel, precision=self.precision)
    return unbiased + bias, unbiased


class InceptionV3(nn.Module):
  """The FID Inception-v3 (pytorch-fid's FID network plus its 1008-way `fc`), NHWC.

  Call with images (N, H, W, 3) float32, values in [0, 255], scaled by `input_scaling` (see
  `scale_input`; default pytorch-fid's 2 (x / 255) - 1, 'none' for inputs already scaled);
  H, W = 299 for the real thing (any size >= 75 runs, e.g. for fast tests).
  Returns a dict: `pool` (N, 2048) — the `pool_3` features of FID/KID —, `logits` (N, 1008) and
  `logits_unbiased` (N, 1008) (= pool @ fc.kernel, no bias).
  Variables: `params` and `batch_stats` (batch norm running statistics); inference only.
  `precision`: 'highest' (default; exact float32 convolutions on GPUs/TPUs), 'high' or 'default'.
  """
  input_scaling: str = "pytorch_fid"
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"InceptionV3 takes (N, H, W, 3) images, got shape {x.shape}.")
    if min(x.shape[1], x.shape[2]) < MIN_INPUT_SIZE:
      raise ValueError(f"InceptionV3 needs images of at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} "
                       f"pixels (299×299 for FID), got {x.shape[1]}×{x.shape[2]}.")
    precision = _PRECISIONS[self.precision]
    x = scale_input(x.astype(jnp.float32), self.input_scaling)
    conv = functools.partial(BasicConv, precision=precision)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = max_pool_3x3(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = max_pool_3x3(x)
    x = FIDInceptionA(32, precision, name="Mixed_5b")(x)
    x = FIDInceptionA(64, precision, name="Mixed_5c")(x)
    x = FIDInceptionA(64, precision, name="Mixed_5d")(x)
    x = InceptionB(precision, name="Mixed_6a")(x)
    x = FIDInceptionC(128, precision, name="Mixed_6b")(x)
    x = FIDInceptionC(160, precision, name="Mixed_6c")(x)
    x = FIDInceptionC(160, precision, name="Mixed_6d")(x)
    x = FIDInceptionC(192, precision, name="Mixed_6e")(x)
    x = InceptionD(precision, name="Mixed_7a")(x)
    x = FIDInceptionE("avg", precision, name="Mixed_7b")(x)
    x = FIDInceptionE("max", precision, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits, unbiased = Logits(NUM_CLASSES, precision, name="fc")(pool)
    return dict(pool=pool, logits=logits, logits_unbiased=unbiased)


@functools.lru_cache(maxsize=None)
def variable_shapes() -> Dict[str, Any]:
  """The module's variables as a tree of jax.ShapeDtypeStruct (no compile, no memory)."""
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), images)


# ----------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax variables

# Flax leaf (collection, last name) -> PyTorch suffix.
_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# State-dict entries the network does not use: batch norm step counters (PyTorch >= 0.4.1) and the
# auxiliary classifier, which the FID file lacks but a torchvision-style file may carry.
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("AuxLogits.",)


def _torch_names() -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """PyTorch state-dict name -> (path of the Flax variable, the PyTorch tensor's shape)."""
  names = {}
  flat = jax.tree_util.tree_flatten_with_path(variable_shapes())[0]
  for key_path, leaf in flat:
    path = tuple(k.key for k in key_path)
    collection, *modules, leaf_name = path
    name = ".".join(modules + [_LEAF_TO_TORCH[collection, leaf_name]])
    shape = tuple(leaf.shape)
    if leaf_name == "kernel" and len(shape) == 4:  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif leaf_name == "kernel":  # (in, out) -> (out, in)
      shape = shape[::-1]
    names[name] = (path, shape)
  return names


def _to_flax(array: np.ndarray, leaf_name: str) -> np.ndarray:
  if leaf_name == "kernel" and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if leaf_name == "kernel":
    return np.transpose(array)
  return array


def state_dict_to_variables(state_dict, source: str = "state dict") -> Dict[str, Any]:
  """Maps pytorch-fid's state-dict names to this module's variables.

  `Mixed_5b.branch1x1.conv.weight` (O, I, kh, kw) -> params/Mixed_5b/branch1x1/conv/kernel
  (kh, kw, I, O); `.bn.weight`/`.bn.bias` -> params .../bn/scale, bias; `.bn.running_mean` /
  `running_var` -> batch_stats .../bn/mean, var; `fc.weight` (1008, 2048) -> params/fc/kernel
  (2048, 1008) and `fc.bias`. `num_batches_tracked` (and any `AuxLogits.*`) entries are ignored;
  anything else missing, extra or of the wrong shape is an `InceptionWeightsError` naming `source`.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays.
  """
  if not isinstance(state_dict, dict):
    raise InceptionWeightsError(f"{source} holds a {type(state_dict).__name__}, not a state dict "
                                "(a dict of tensors by name).")
  expected = _torch_names()
  used = {k for k in state_dict
          if not (k.endswith(_IGNORED_SUFFIXES) or k.startswith(_IGNORED_PREFIXES))}
  missing = sorted(set(expected) - used)
  unexpected = sorted(used - set(expected))
  wrong = []
  variables: Dict[str, Any] = {}
  for name, (path, shape) in expected.items():
    if name not in state_dict:
      continue
    array = np.asarray(state_dict[name])
    if tuple(array.shape) != shape:
      wrong.append(f"{name}: {tuple(array.shape)}, expected {shape}")
      continue
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _to_flax(array, path[-1]).astype(np.float32)
  if missing or unexpected or wrong:
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
      if items:
        shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
        problems.append(f"{label}: {shown}")
    raise InceptionWeightsError(
        f"{source} is not the FID Inception-v3's state dict ({'; '.join(problems)}). Expected "
        f"pytorch-fid's {WEIGHTS_FILENAME} (SHA-256 starting {WEIGHTS_SHA256_PREFIX}).")
  return variables


def variables_to_state_dict(variables) -> Dict[str, np.ndarray]:
  """The inverse of `state_dict_to_variables`: PyTorch names and layouts, float32 numpy."""
  state = {}
  for name, (path, _) in _torch_names().items():
    leaf = variables
    for key in path:
      leaf = leaf[key]
    leaf = np.asarray(leaf, np.float32)
    if path[-1] == "kernel" and leaf.ndim == 4:
      leaf = np.transpose(leaf, (3, 2, 0, 1))
    elif path[-1] == "kernel":
      leaf = np.transpose(leaf)
    state[name] = np.ascontiguousarray(leaf)
  return state


# ----------------------------------------------------------------------------------------------
# The weight file


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def default_weight_locations() -> Sequence[str]:
  """Where a copy may already sit without configuration: PyTorch's hub cache (where pytorch-fid
  keeps the file it downloads), then the project's own cache."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
      "torch")
  return (os.path.join(torch_home, "hub", "checkpoints", WEIGHTS_FILENAME),
          os.path.join(os.path.expanduser(os.path.join("~", ".cache", "tdas")), WEIGHTS_FILENAME))


def _missing_message(where: str) -> str:
  return (f"{where} The FID Inception-v3 weights are pytorch-fid's file {WEIGHTS_FILENAME} "
          f"(about 96 MB, SHA-256 starting {WEIGHTS_SHA256_PREFIX}); nothing is downloaded. Put "
          f"the file (or the .npz that `python -m tools.convert_inception --input "
          f"{WEIGHTS_FILENAME} --output inception.npz` makes from it) anywhere and point "
          f"config.eval.inception_weights (or the environment variable {WEIGHTS_ENV}) at it, or "
          f"place it at {default_weight_locations()[0]}.")


def resolve_weights_path(configured: str = "") -> str:
  """The weight file to use: `configured` (config.eval.inception_weights), else $TDAS_INCEPTION_
  WEIGHTS, else the first existing default location. Raises InceptionWeightsNotFound."""
  if configured:
    if not os.path.isfile(configured):
      raise InceptionWeightsNotFound(_missing_message(
          f"config.eval.inception_weights={configured!r} does not exist."))
    return configured
  from_env = os.environ.get(WEIGHTS_ENV, "")
  if from_env:
    if not os.path.isfile(from_env):
      raise InceptionWeightsNotFound(_missing_message(
          f"{WEIGHTS_ENV}={from_env!r} does not exist."))
    return from_env
  for candidate in default_weight_locations():
    if os.path.isfile(candidate):
      return candidate
  raise InceptionWeightsNotFound(_missing_message(
      f"No Inception weight file: config.eval.inception_weights and {WEIGHTS_ENV} are unset and "
      f"none of {list(default_weight_locations())} exists."))


def read_state_dict(path: str) -> Tuple[Dict[str, np.ndarray], str]:
  """(state dict of numpy arrays, SHA-256 hex of the original .pth) from a .pth or converted .npz.
  """
  if not os.path.isfile(path):
    raise InceptionWeightsNotFound(_missing_message(f"{path!r} does not exist."))
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    except Exception as e:  # pylint: disable=broad-except
      raise InceptionWeightsError(f"{path!r} is not a readable .npz (truncated or damaged?): "
                                  f"{type(e).__name__}: {e}") from e
    sha = str(state.pop("source_sha256", ""))
    return state, sha
  try:
    state = pytorch_io.load(path)
  except pytorch_io.PyTorchFileError as e:
    raise InceptionWeightsError(
        f"Cannot read the Inception weights {path!r}: {e} Expected pytorch-fid's "
        f"{WEIGHTS_FILENAME} (SHA-256 starting {WEIGHTS_SHA256_PREFIX}).") from e
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  return state, file_sha256(path)


def load_variables(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Reads the Inception weights (.pth in zip or legacy format, or converted .npz).

  Returns:
    (variables {'params', 'batch_stats'} of float32 numpy arrays, info dict: `path`, `sha256`,
    `official` — whether the SHA-256 starts with 6726825d; other weights load with a warning).
  """
  state, sha = read_state_dict(path)
  variables = state_dict_to_variables(state, source=repr(path))
  official = sha.startswith(WEIGHTS_SHA256_PREFIX)
  if not official:
    logging.warning("Inception weights %s have SHA-256 %s..., not %s...: FID/KID/IS from them are "
                    "not comparable with published numbers.", path, sha[:8] or "(unknown)",
                    WEIGHTS_SHA256_PREFIX)
  return variables, dict(path=os.path.abspath(path), sha256=sha, official=official)


# ----------------------------------------------------------------------------------------------
# Input handling


def _resize_clean_one(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channels = []
  for c in range(image.shape[2]):
    # A float32 ('F' mode) image per channel: PIL's bicubic filter (antialiased when shrinking),
    # no rounding back to uint8 (clean-fid's 'clean' mode).
    resized = Image.fromarray(image[:, :, c].astype(np.float32)).resize(
        (size, size), resample=Image.Resampling.BICUBIC)
    channels.append(np.asarray(resized, np.float32))
  return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def _bilinear_axis(x: np.ndarray, axis: int, size: int, half_pixel: bool) -> np.ndarray:
  """Bilinear resampling of `x` along `axis` to `size` samples, no antialiasing (float32)."""
  n = x.shape[axis]
  if n == size:
    return x
  scale = np.float32(n / size)
  dst = np.arange(size, dtype=np.float32)
  if half_pixel:  # PyTorch align_corners=False: centres aligned, clamped at 0
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  else:  # TensorFlow 1 resize_bilinear (align_corners=False, no half-pixel centres)
    src = dst * scale
  i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
  i1 = np.minimum(i0 + 1, n - 1)
  frac = (src - i0).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = size
  frac = frac.reshape(shape)
  a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
  return a + (b - a) * frac


def resize_images(images: np.ndarray, mode: str = "clean", size: int = INPUT_SIZE,
                  threads: int = 0) -> np.ndarray:
  """uint8 images (N, h, w, C), C in {1, 3} -> float32 (N, size, size, 3) with values in [0, 255].

  Modes:
    'clean': clean-fid's default: PIL bicubic on each channel of the uint8 image taken as float32
      (antialiased when shrinking), clipped to [0, 255], not requantised.
    'tf_legacy': the original TensorFlow FID code's in-graph resize (TF1 `resize_bilinear`,
      align_corners=False, no half-pixel centres, no antialiasing).
    'pytorch_bilinear': pytorch-fid's `F.interpolate(mode='bilinear', align_corners=False)`.
  Grayscale images are repeated to 3 channels after resizing. An image already size×size passes
  unchanged (as float32) in every mode.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise UserError(f"Images for the Inception network must be uint8 (N, H, W, C), got dtype "
                     f"{images.dtype}.")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"Images for the Inception network must be (N, H, W, 1 or 3), got shape "
                     f"{images.shape}.")
  if mode not in RESIZE_MODES:
    raise UserError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES} "
                     "(config.eval.resize).")
  if images.shape[1:3] == (size, size):
    out = images.astype(np.float32)
  elif mode == "clean":
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(images) > 1:
      with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL
        out = np.stack(list(pool.map(lambda im: _resize_clean_one(im, size), images)))
    else:
      out = np.stack([_resize_clean_one(im, size) for im in images])
  else:
    half_pixel = mode == "pytorch_bilinear"
    out = images.astype(np.float32)
    out = _bilinear_axis(out, 1, size, half_pixel)
    out = _bilinear_axis(out, 2, size, half_pixel)
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.ascontiguousarray(out, np.float32)


# ----------------------------------------------------------------------------------------------
# Batched features over all local devices


@functools.lru_cache(maxsize=None)
def _sharded_apply(precision: str, input_scaling: str, mesh):
  """The jitted forward over `mesh`'s batch axis (one per setting and mesh, so that extractors
  built again reuse the compiled program)."""
  from sampling import devices as device_lib  # pylint: disable=g-import-not-at-top
  return jax.jit(InceptionV3(input_scaling=input_scaling, precision=precision).apply,
                 in_shardings=(device_lib.replicated(mesh), device_lib.batch_sharding(mesh)),
                 out_shardings=device_lib.batch_sharding(mesh))


class FeatureExtractor:
  """Inception features of uint8 images, in fixed-size batches split over all local devices.

  Each batch is resized on the host (`resize_images`) while the previous one runs; the last is
  padded, so the network compiles once.

  Args:
    variables: {'params', 'batch_stats'} (e.g. from `load_variables`).
    resize: 'clean' | 'tf_legacy' | 'pytorch_bilinear' (see `resize_images`).
    input_scaling: 'pytorch_fid' | 'tensorflow' (see `scale_input`); '' = the scaling of the tool
      whose resize `resize` reproduces (`SCALING_OF_RESIZE`: clean-fid's for 'clean').
    batch_size: images per global batch, rounded up to a multiple of the device count.
    image_size: network input size (299 for FID; smaller sizes >= 75 only for tests).
    devices: devices to split batches over (default: this process's local devices).
    precision: convolution precision, 'highest' by default.
  """

  def __init__(self, variables, resize: str = "clean", batch_size: int = 64,
               image_size: int = INPUT_SIZE, devices=None, precision: str = "highest",
               input_scaling: str = ""):
    from sampling import devices as device_lib  # pylint: disable=g-import-not-at-top
    if resize not in RESIZE_MODES:
      raise UserError(f"Unknown resize mode {resize!r}; expected one of {RESIZE_MODES} "
                       "(config.eval.resize).")
    self.resize, self.image_size = resize, int(image_size)
    self.input_scaling = input_scaling or SCALING_OF_RESIZE[resize]
    if self.input_scaling not in INPUT_SCALINGS[:2]:
      raise UserError(f"Unknown input scaling {input_scaling!r}; expected 'pytorch_fid' or "
                       "'tensorflow' (config.eval.input_scaling).")
    self.mesh = device_lib.batch_mesh(jax.local_devices() if devices is None else devices)
    count = self.mesh.devices.size
    self.batch_size = max(1, -(-int(batch_size) // count)) * count
    self._batch_sharding = device_lib.batch_sharding(self.mesh)
    self._apply = _sharded_apply(precision, self.input_scaling, self.mesh)
    self.variables = jax.device_put(variables, device_lib.replicated(self.mesh))

  def _launch(self, images: np.ndarray):
    x = resize_images(images, self.resize, self.image_size)
    if len(x) < self.batch_size:
      x = np.concatenate([x, np.zeros((self.batch_size - len(x),) + x.shape[1:], x.dtype)])
    return self._apply(self.variables, jax.device_put(x, self._batch_sharding)), len(images)

  @staticmethod
  def _fetch(pending) -> Dict[str, np.ndarray]:
    out, n = pending
    return {k: np.asarray(v)[:n] for k, v in out.items()}

  def batches(self, images: Iterable[np.ndarray]):
    """Yields feature dicts (`pool` (n, 2048), `logits`, `logits_unbiased` (n, 1008)) for the
    batches of an iterable of uint8 image arrays (N_i, H, W, C), in order."""
    pending = None
    for chunk in images:
      chunk = np.asarray(chunk)
      for start in range(0, len(chunk), self.batch_size):
        launched = self._launch(chunk[start:start + self.batch_size])
        if pending is not None:
          yield self._fetch(pending)
        pending = launched
    if pending is not None:
      yield self._fetch(pending)

  def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """uint8 (N, H, W, C) -> {'pool': (N, 2048), 'logits': (N, 1008), 'logits_unbiased':
    (N, 1008)} float32 numpy."""
    parts = list(self.batches([images]))
    if not parts:
      return dict(pool=np.zeros((0, FEATURE_DIM), np.float32),
                  logits=np.zeros((0, NUM_CLASSES), np.float32),
                  logits_unbiased=np.zeros((0, NUM_CLASSES), np.float32))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def extractor_from_config(config, devices=None, image_size: Optional[int] = None):
  """(FeatureExtractor, weights info) for `config.eval` (inception_weights, resize,
  input_scaling, inception_batch_size). `image_size` defaults to INPUT_SIZE (299)."""
  evaluate = config.eval
  image_size = INPUT_SIZE if image_size is None else image_size
  path = resolve_weights_path(str(evaluate.get("inception_weights", "") or ""))
  variables, info = load_variables(path)
  extractor = FeatureExtractor(variables, resize=str(evaluate.get("resize", "clean")),
                               batch_size=int(evaluate.get("inception_batch_size", 64)),
                               image_size=image_size, devices=devices,
                               input_scaling=str(evaluate.get("input_scaling", "") or ""))
  return extractor, info
