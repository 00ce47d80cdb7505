"""score_sde_pytorch checkpoints without PyTorch: the file reader/writer (`pytorch_io`), the name
and layout mapping (`models/torch_names.py`), `checkpoints.load_score_sde_pytorch`,
`load_checkpoint` and `find_checkpoint`, and `python -m tools.convert_checkpoint`.

The mapping is checked two ways: against the shared PyTorch reference output (NCSN++), and by
writing synthetic PyTorch state dicts for tiny DDPM, DDPM++ and NCSNv2 networks whose tensor
names, registration order and layouts are written out here from the PyTorch architectures,
independently of the loader's own pairing algorithm. The FIR resampling convs, which no reference
case uses, are checked against numpy versions of the PyTorch ops.
"""
import collections
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from flax import traverse_util

import checkpoints
import pytorch_io
from models import utils as model_utils
from reference_cases import GOLDEN_DIR, config_from_dict, golden_case, relative_error

# pylint: disable=protected-access  (the reader is also fed hand-made files built with its helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTH_DIR = os.path.join(GOLDEN_DIR, "score_sde_pytorch_checkpoint", "ncsnpp_ffhq_small")
PTH_FILE = os.path.join(PTH_DIR, "checkpoint_26.pth")
REFERENCE_CASE = "ncsnpp_ffhq_small"  # the golden case with the same config (one compile)


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_same_variables(actual, expected):
  actual, expected = _flat(actual), _flat(expected)
  assert sorted(actual) == sorted(expected)
  for name, value in expected.items():
    assert actual[name].dtype == value.dtype, name
    np.testing.assert_array_equal(actual[name], value, err_msg=name)


def _deep_equal(a, b):
  if isinstance(a, np.ndarray):
    return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and np.array_equal(a, b))
  if isinstance(a, dict):
    return (type(a) is type(b) and list(a) == list(b) and all(_deep_equal(a[k], b[k]) for k in a)
            and (not hasattr(a, "__dict__") or _deep_equal(dict(vars(a)), dict(vars(b)))))
  if isinstance(a, (list, tuple)):
    return type(a) is type(b) and len(a) == len(b) and all(map(_deep_equal, a, b))
  return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(PTH_DIR, "reference.npz")) as data:
    case = {k: data[k] for k in ("x", "t", "y")}
    case["config"] = config_from_dict(json.loads(str(data["config_json"])))
  # The jitted forward of the golden case is reused: it must be the same network.
  assert case["config"].to_dict() == golden_case(REFERENCE_CASE)["config"].to_dict()
  return case


@pytest.fixture(scope="module")
def imported(reference):
  return checkpoints.import_score_sde_pytorch(PTH_FILE, reference["config"])


def _forward(variables, case):
  from compiled_models import _jitted_apply  # pylint: disable=g-import-not-at-top
  return np.asarray(_jitted_apply(REFERENCE_CASE)(variables, case["x"], case["t"]))


# ----------------------------------------------------------------------------------------------
# The shared reference case


def test_ema_weights_reproduce_the_pytorch_output(reference, imported):
  variables, step = checkpoints.load_score_sde_pytorch(PTH_FILE, reference["config"])
  _assert_same_variables(variables, imported["ema"])
  assert step == 26 == imported["step"]
  assert relative_error(_forward(variables, reference), reference["y"]) < 1e-4


def test_raw_weights_differ_and_give_another_output(reference, imported):
  variables, _ = checkpoints.load_score_sde_pytorch(PTH_FILE, reference["config"], use_ema=False)
  _assert_same_variables(variables, imported["raw"])
  assert relative_error(_forward(variables, reference), reference["y"]) > 1e-2


# ----------------------------------------------------------------------------------------------
# pytorch_io


def test_zip_writer_rewrites_the_reference_file_exactly(tmp_path):
  obj = pytorch_io.load(PTH_FILE)
  out = str(tmp_path / "rewritten.pth")
  pytorch_io.save(obj, out)
  with zipfile.ZipFile(PTH_FILE) as original, zipfile.ZipFile(out) as rewritten:
    records = {n.split("/", 1)[1]: original.read(n) for n in original.namelist()}
    written = {n.split("/", 1)[1]: rewritten.read(n) for n in rewritten.namelist()}
    assert sorted(written) == sorted(records)
    for name, data in records.items():
      if name != ".data/serialization_id":  # random in PyTorch
        assert written[name] == data, name  # data.pkl too: the same pickle, byte for byte
    for info in rewritten.infolist():  # stored, data aligned like PyTorch's
      assert info.compress_type == zipfile.ZIP_STORED
      assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0
  assert _deep_equal(pytorch_io.load(out), obj)


def test_both_serialisations_hold_the_same_state(tmp_path, reference, imported):
  obj = pytorch_io.load(PTH_FILE)
  assert list(obj["model"])[:2] == ["module.sigmas", "module.all_modules.0.W"]
  assert obj["model"]._metadata["module.all_modules.4"] == {"version": 1}  # state-dict metadata
  zip_file, legacy_file = str(tmp_path / "zip.pth"), str(tmp_path / "legacy.pth")
  pytorch_io.save(obj, zip_file)
  pytorch_io.save(obj, legacy_file, legacy=True)
  assert zipfile.is_zipfile(zip_file) and not zipfile.is_zipfile(legacy_file)
  with open(legacy_file, "rb") as f:  # the legacy header, read with the standard library
    assert pickle.load(f) == pytorch_io.MAGIC_NUMBER
    assert pickle.load(f) == pytorch_io.LEGACY_PROTOCOL_VERSION
    assert pickle.load(f)["little_endian"] is True
  assert _deep_equal(pytorch_io.load(legacy_file), obj)
  assert _deep_equal(pytorch_io.load(zip_file), obj)
  for path in (zip_file, legacy_file):
    loaded = checkpoints.import_score_sde_pytorch(path, reference["config"])
    _assert_same_variables(loaded["ema"], imported["ema"])
    _assert_same_variables(loaded["raw"], imported["raw"])


def test_reader_follows_offsets_strides_and_shared_storages(tmp_path):
  """Tensors that view one storage at an offset and with strides (as PyTorch writes views)."""
  base = np.arange(24, dtype=np.float32)

  class View:
    def __init__(self, storage, offset, shape, stride):
      self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
      return (pytorch_io._Global.get("torch._utils", "_rebuild_tensor_v2"), self.args)

  storage = pytorch_io._StorageOut(base, "0")
  obj = {"t": View(storage, 2, (3, 4), (1, 3)), "row": View(storage, 20, (4,), (1,)),
         "scalar": View(storage, 5, (), ())}
  data_pkl, storages = pytorch_io._pickle(obj, legacy=False)
  assert storages == []  # the views bring their own storage
  path = tmp_path / "views.pth"
  with open(path, "wb") as f:
    pytorch_io._write_zip_records(f, "views", [("data.pkl", data_pkl), ("data/0", base.tobytes())])
  loaded = pytorch_io.load(str(path))
  np.testing.assert_array_equal(loaded["t"], base[2:14].reshape(4, 3).T)
  np.testing.assert_array_equal(loaded["row"], base[20:24])
  assert loaded["scalar"].shape == () and loaded["scalar"] == 5


def test_writer_and_reader_keep_dtypes(tmp_path):
  obj = collections.OrderedDict(
      f64=np.linspace(0, 1, 5), f16=np.ones((2, 3), np.float16), i64=np.arange(6).reshape(2, 3),
      u8=np.arange(4, dtype=np.uint8), flag=np.array([True, False]), empty=np.zeros((0, 3)),
      nested=[1, 2.5, "text", None, (np.float32(3.0), {"k": np.int32(4)})])
  for legacy in (False, True):
    path = str(tmp_path / f"dtypes_{legacy}.pth")
    pytorch_io.save(obj, path, legacy=legacy)
    loaded = pytorch_io.load(path)
    for key in ("f64", "f16", "i64", "u8", "flag", "empty"):
      assert loaded[key].dtype == obj[key].dtype and loaded[key].shape == obj[key].shape
      np.testing.assert_array_equal(loaded[key], obj[key])
    assert loaded["nested"] == [1, 2.5, "text", None, (3.0, {"k": 4})]


# ----------------------------------------------------------------------------------------------
# Mapping checked independently: synthetic PyTorch state dicts written from the architectures.
#
# Each `_*_torch_layout(config)` lists (PyTorch state-dict name, flax variable, layout, frozen) in
# PyTorch's registration order, as score_sde_pytorch's __init__ builds the network.


def _to_torch(value, layout):
  """Flax variable -> PyTorch tensor: conv (KH, KW, I, O) -> (O, I, KH, KW), dense (I, O) ->
  (O, I), vec: flattened to (C,), same: unchanged."""
  if layout == "conv":
    return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
  if layout == "dense":
    return np.ascontiguousarray(value.T)
  if layout == "vec":
    return value.reshape(-1)
  return value


def _conv(t, f, bias=True):
  return [(f"{t}.weight", f"{f}/kernel", "conv")] + ([(f"{t}.bias", f"{f}/bias", "vec")]
                                                      if bias else [])


def _fir_conv(t, f):
  return [(f"{t}.weight", f"{f}/weight", "conv"), (f"{t}.bias", f"{f}/bias", "vec")]


def _dense(t, f):
  return [(f"{t}.weight", f"{f}/kernel", "dense"), (f"{t}.bias", f"{f}/bias", "vec")]


def _group_norm(t, f):
  return [(f"{t}.weight", f"{f}/scale", "vec"), (f"{t}.bias", f"{f}/bias", "vec")]


def _nin(t, f):
  return [(f"{t}.W", f"{f}/W", "same"), (f"{t}.b", f"{f}/b", "vec")]


def _instance_norm_plus(t, f):
  return [(f"{t}.{n}", f"{f}/{n}", "vec") for n in ("alpha", "gamma", "beta")]


def _resnet_block(t, f):
  """ResnetBlockDDPM / DDPMpp / BigGANpp: attributes in registration order (the optional ones
  are kept where the flax model has them)."""
  return (_group_norm(f"{t}.GroupNorm_0", f"{f}/GroupNorm_0") + _conv(f"{t}.Conv_0", f"{f}/Conv_0")
          + _dense(f"{t}.Dense_0", f"{f}/Dense_0")
          + _group_norm(f"{t}.GroupNorm_1", f"{f}/GroupNorm_1")
          + _conv(f"{t}.Conv_1", f"{f}/Conv_1") + _conv(f"{t}.Conv_2", f"{f}/Conv_2")
          + _nin(f"{t}.NIN_0", f"{f}/NIN_0"))


def _attn_block(t, f):
  return _group_norm(f"{t}.GroupNorm_0", f"{f}/GroupNorm_0") + sum(
      (_nin(f"{t}.NIN_{i}", f"{f}/NIN_{i}") for i in range(4)), [])


def _resample(t, f):
  return _conv(f"{t}.Conv_0", f"{f}/Conv_0") + _fir_conv(f"{t}.Conv2d_0", f"{f}/Conv2d_0")


class _AllModules:
  """Builds score_sde_pytorch's `all_modules` list and the flax names of the same modules."""

  def __init__(self, shapes):
    self.shapes, self.entries, self.index = shapes, [], 0
    self.counts = collections.Counter()

  def _flax_name(self, cls):
    name = f"params/{cls}_{self.counts[cls]}"
    self.counts[cls] += 1
    return name

  def add(self, cls, block, frozen=False):
    """A module appended to all_modules (with or without tensors) and created in flax."""
    entries = block(f"all_modules.{self.index}", self._flax_name(cls))
    self.entries += [(t, f, layout, frozen) for t, f, layout in entries if f in self.shapes]
    self.index += 1

  def flax_only(self, cls):
    """A flax module outside all_modules (e.g. the FIR pyramid resamplers without a conv)."""
    self._flax_name(cls)


def _ddpm_torch_layout(config, shapes):
  m = config.model
  net = _AllModules(shapes)
  if m.conditional:
    net.add("Dense", _dense)
    net.add("Dense", _dense)
  net.add("Conv", _conv)
  resolution, levels = config.data.image_size, len(m.ch_mult)
  for level in range(levels):
    for _ in range(m.num_res_blocks):
      net.add("ResnetBlockDDPM", _resnet_block)
      if resolution in m.attn_resolutions:
        net.add("AttnBlock", _attn_block)
    if level != levels - 1:
      net.add("Downsample", _resample)
      resolution //= 2
  net.add("ResnetBlockDDPM", _resnet_block)
  net.add("AttnBlock", _attn_block)
  net.add("ResnetBlockDDPM", _resnet_block)
  for level in reversed(range(levels)):
    for _ in range(m.num_res_blocks + 1):
      net.add("ResnetBlockDDPM", _resnet_block)
    if resolution in m.attn_resolutions:
      net.add("AttnBlock", _attn_block)
    if level != 0:
      net.add("Upsample", _resample)
      resolution *= 2
  net.add("GroupNorm", _group_norm)
  net.add("Conv", _conv)
  return net.entries


def _ncsnpp_torch_layout(config, shapes):
  m = config.model
  net = _AllModules(shapes)
  resnet = "ResnetBlockDDPMpp" if m.resblock_type == "ddpm" else "ResnetBlockBigGANpp"
  if m.embedding_type == "fourier":
    net.add("GaussianFourierProjection", lambda t, f: [(f"{t}.W", f"{f}/W", "vec")], frozen=True)
  if m.conditional:
    net.add("Dense", _dense)
    net.add("Dense", _dense)
  net.add("Conv", _conv)
  resolution, levels = config.data.image_size, len(m.ch_mult)
  for level in range(levels):
    for _ in range(m.num_res_blocks):
      net.add(resnet, _resnet_block)
      if resolution in m.attn_resolutions:
        net.add("AttnBlockpp", _attn_block)
    if level != levels - 1:
      net.add("Downsample" if m.resblock_type == "ddpm" else resnet,
              _resample if m.resblock_type == "ddpm" else _resnet_block)
      resolution //= 2
      if m.progressive_input == "input_skip":
        net.flax_only("Downsample")
        net.add("Combine", lambda t, f: _conv(f"{t}.Conv_0", f"{f}/Conv_0"))
      elif m.progressive_input == "residual":
        net.add("Downsample", _resample)
  net.add(resnet, _resnet_block)
  net.add("AttnBlockpp", _attn_block)
  net.add(resnet, _resnet_block)
  for level in reversed(range(levels)):
    for _ in range(m.num_res_blocks + 1):
      net.add(resnet, _resnet_block)
    if resolution in m.attn_resolutions:
      net.add("AttnBlockpp", _attn_block)
    if m.progressive != "none":
      if level == levels - 1:
        net.add("GroupNorm", _group_norm)
        net.add("Conv", _conv)
      elif m.progressive == "output_skip":
        net.flax_only("Upsample")
        net.add("GroupNorm", _group_norm)
        net.add("Conv", _conv)
      else:
        net.add("Upsample", _resample)
    if level != 0:
      net.add("Upsample" if m.resblock_type == "ddpm" else resnet,
              _resample if m.resblock_type == "ddpm" else _resnet_block)
      resolution *= 2
  if m.progressive != "output_skip":
    net.add("GroupNorm", _group_norm)
    net.add("Conv", _conv)
  return net.entries


# score_sde_pytorch NCSNv2 classes: backbone stages (name, resample of block 0, dilation) and the
# refine blocks in registration order with their position in the forward pass.
_NCSNV2_STAGES = {
    "ncsnv2_64": [("res1", None, 1), ("res2", "down", 1), ("res3", "down", 2),
                  ("res4", "down", 4)],
    "ncsnv2_256": [("res1", None, 1), ("res2", "down", 1), ("res3", "down", 1),
                   ("res31", "down", 1), ("res4", "down", 2), ("res5", "down", 4)],
}
_NCSNV2_REFINES = {
    "ncsnv2_64": [("refine1", 0), ("refine2", 1), ("refine3", 2), ("refine4", 3)],
    "ncsnv2_256": [("refine1", 0), ("refine2", 1), ("refine3", 3), ("refine31", 2),
                   ("refine4", 4), ("refine5", 5)],
}


def _rcu(t, f, n_blocks):
  return sum((_conv(f"{t}.{i}_{j}_conv", f"{f}/Conv_{(i - 1) * 2 + j - 1}", bias=False)
              for i in range(1, n_blocks + 1) for j in (1, 2)), [])


def _ncsnv2_torch_layout(config, shapes):
  name = config.model.name
  norm = "InstanceNorm2dPlus"
  entries = (_conv("begin_conv", "params/Conv_0") + _instance_norm_plus("normalizer",
                                                                         f"params/{norm}_0")
             + _conv("end_conv", "params/Conv_1"))
  for s, (stage, resample, dilation) in enumerate(_NCSNV2_STAGES[name]):
    for b in (0, 1):
      t, f = f"{stage}.{b}", f"params/ResidualBlock_{2 * s + b}"
      block = _conv(f"{t}.conv1", f"{f}/Conv_0") + _instance_norm_plus(f"{t}.normalize2",
                                                                       f"{f}/{norm}_1")
      if b == 0 and resample == "down" and dilation == 1:
        block += _conv(f"{t}.conv2.conv", f"{f}/ConvMeanPool_0/Conv_0")
        block += _conv(f"{t}.shortcut.conv", f"{f}/ConvMeanPool_1/Conv_0")
      elif b == 0 and resample == "down":
        block += _conv(f"{t}.conv2", f"{f}/Conv_1") + _conv(f"{t}.shortcut", f"{f}/Conv_2")
      else:
        block += _conv(f"{t}.conv2", f"{f}/Conv_1")
      entries += block + _instance_norm_plus(f"{t}.normalize1", f"{f}/{norm}_0")
  refines = _NCSNV2_REFINES[name]
  for refine, position in refines:
    t, f = refine, f"params/RefineBlock_{position}"
    start, end = position == 0, position == len(refines) - 1
    n_inputs = 1 if start else 2
    for i in range(n_inputs):
      entries += _rcu(f"{t}.adapt_convs.{i}", f"{f}/RCUBlock_{i}", 2)
    entries += _rcu(f"{t}.output_convs", f"{f}/RCUBlock_{n_inputs}", 3 if end else 1)
    if not start:
      for i in range(n_inputs):
        entries += _conv(f"{t}.msf.convs.{i}", f"{f}/MSFBlock_0/Conv_{i}")
    for i in range(2):
      entries += _conv(f"{t}.crp.convs.{i}", f"{f}/CRPBlock_0/Conv_{i}", bias=False)
  return [(t, f, layout, False) for t, f, layout in entries]


def _tiny_config(module, **model_fields):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.tiny.{module}").get_config()
  for key, value in model_fields.items():
    setattr(config.model, key, value)
  return config


SYNTHETIC_CASES = {
    # DDPM without resampling convs: its Downsample/Upsample entries of all_modules hold no tensors.
    "ddpm": lambda: (_tiny_config("ddpm_vp_discrete", resamp_with_conv=False), _ddpm_torch_layout),
    # DDPM++ with DDPM blocks, FIR resampling convs (Conv2d_0) and residual pyramids both ways.
    "ddpmpp_fir_residual": lambda: (_tiny_config(
        "ddpmpp_vp_continuous", resblock_type="ddpm", fir=True, progressive="residual",
        progressive_input="residual"), _ncsnpp_torch_layout),
    # NCSN++ with Fourier features (frozen W), input_skip 'cat' and output_skip pyramids.
    "ncsnpp_fourier_skip": lambda: (_tiny_config(
        "ncsnpp_ve_continuous", progressive_combine="cat"), _ncsnpp_torch_layout),
    "ncsnv2_64": lambda: (_tiny_config("ncsnv2_ve"), _ncsnv2_torch_layout),
    "ncsnv2_256": lambda: (_tiny_config("ncsnv2_ve", name="ncsnv2_256"), _ncsnv2_torch_layout),
}


def _synthetic_checkpoint(config, torch_layout, seed=0):
  """A score_sde_pytorch checkpoint (as pytorch_io.save writes it) built from random flax
  variables through the layouts above; returns (checkpoint, raw variables, EMA variables)."""
  shapes = checkpoints.expected_variable_shapes(config)
  layout = torch_layout(config, shapes)
  flax_paths = [f for _, f, _, _ in layout]
  assert sorted(flax_paths) == sorted(shapes), "the layout covers every variable exactly once"
  rng = np.random.default_rng(seed)
  raw = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
  ema = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
  model = collections.OrderedDict(
      [("module.sigmas", np.asarray(model_utils.get_sigmas(config), np.float64))])
  shadow = []
  for t, f, kind, frozen in layout:
    model[f"module.{t}"] = _to_torch(raw[f], kind)
    if frozen:  # score_sde_pytorch's EMA skips parameters created with requires_grad=False
      ema[f] = raw[f]
    else:
      shadow.append(_to_torch(ema[f], kind))
  checkpoint = dict(
      optimizer=dict(state={}, param_groups=[dict(lr=2e-4, params=list(range(len(layout))))]),
      model=model, ema=dict(decay=0.999, num_updates=3, shadow_params=shadow), step=7)
  unflatten = lambda flat: traverse_util.unflatten_dict({tuple(k.split("/")): v
                                                         for k, v in flat.items()})
  return checkpoint, unflatten(raw), unflatten(ema)


@pytest.mark.parametrize("case", sorted(SYNTHETIC_CASES))
def test_synthetic_pytorch_checkpoints_load_exactly(tmp_path, case):
  config, torch_layout = SYNTHETIC_CASES[case]()
  checkpoint, raw, ema = _synthetic_checkpoint(config, torch_layout)
  legacy = case.startswith("ncsnv2")  # both serialisations get used
  path = str(tmp_path / "checkpoint_7.pth")
  pytorch_io.save(checkpoint, path, legacy=legacy)
  loaded = checkpoints.import_score_sde_pytorch(path, config)
  assert loaded["step"] == 7
  _assert_same_variables(loaded["ema"], ema)
  _assert_same_variables(loaded["raw"], raw)


def test_a_transposed_kernel_is_caught(tmp_path):
  """The comparison above sees layout mistakes that keep the shape (square kernels)."""
  config, torch_layout = SYNTHETIC_CASES["ddpm"]()
  checkpoint, raw, _ = _synthetic_checkpoint(config, torch_layout)
  model = checkpoint["model"]
  dense = model["module.all_modules.1.weight"]  # Dense_1: (4 nf, 4 nf)
  conv = model["module.all_modules.2.weight"]  # Conv_0: (nf, C, 3, 3)
  assert dense.shape[0] == dense.shape[1] and conv.shape[2] == conv.shape[3]
  model["module.all_modules.1.weight"] = np.ascontiguousarray(dense.T)
  model["module.all_modules.2.weight"] = np.ascontiguousarray(np.swapaxes(conv, 2, 3))
  path = str(tmp_path / "transposed.pth")
  pytorch_io.save(checkpoint, path)
  loaded = _flat(checkpoints.load_score_sde_pytorch(path, config, use_ema=False)[0])
  expected = _flat(raw)
  for name in ("params/Dense_1/kernel", "params/Conv_0/kernel"):
    assert not np.array_equal(loaded[name], expected[name]), name
  same = [k for k in expected if k not in ("params/Dense_1/kernel", "params/Conv_0/kernel")]
  assert all(np.array_equal(loaded[k], expected[k]) for k in same)


def test_official_ema_without_the_frozen_fourier_weights(tmp_path, reference, imported):
  """score_sde_pytorch's EMA leaves out `W` (requires_grad=False): it keeps its model value."""
  obj = pytorch_io.load(PTH_FILE)
  obj["ema"]["shadow_params"] = obj["ema"]["shadow_params"][1:]  # parameter 0 is all_modules.0.W
  path = str(tmp_path / "official_ema.pth")
  pytorch_io.save(obj, path)
  variables = _flat(checkpoints.load_score_sde_pytorch(path, reference["config"])[0])
  expected = _flat(imported["ema"])
  np.testing.assert_array_equal(variables["params/GaussianFourierProjection_0/W"],
                                _flat(imported["raw"])["params/GaussianFourierProjection_0/W"])
  del variables["params/GaussianFourierProjection_0/W"]
  assert all(np.array_equal(v, expected[k]) for k, v in variables.items())


def _fir_filter_nchw(x, k, pad0, pad1):
  """StyleGAN2's upfirdn2d with up = down = 1 on NCHW: zero-pad, then true convolution with k."""
  x = np.pad(x, ((0, 0), (0, 0), (pad0, pad1), (pad0, pad1)))
  flipped, size = k[::-1, ::-1], k.shape[0]
  out_size = x.shape[2] - size + 1
  out = np.zeros(x.shape[:2] + (out_size, out_size))
  for a in range(size):
    for b in range(size):
      out += x[:, :, a:a + out_size, b:b + out_size] * flipped[a, b]
  return out


def test_fir_conv_weight_layout_matches_pytorch_semantics():
  """The FIR `Conv2d_0` layers (no reference case uses them) get PyTorch's OIHW weight as HWIO:
  numpy versions of score_sde_pytorch's fused ops, written from their definitions
  (conv_transpose2d of the flipped, I/O-swapped weight, then FIR filtering; FIR filtering, then a
  stride-2 conv2d), agree with the flax ones."""
  from models import up_or_down_sampling as fir_ops  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # (O, I, K, K)
  hwio = np.transpose(weight, (2, 3, 1, 0))
  fir = fir_ops.setup_kernel((1, 3, 3, 1))

  x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)  # NCHW
  transposed = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (I, O, K, K)
  full = np.zeros((2, 4, 2 * 4 + 3, 2 * 4 + 3))
  for i in range(5):
    for j in range(5):
      full[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum("nc,copq->nopq", x[:, :, i, j],
                                                                transposed)
  expected_up = _fir_filter_nchw(full, fir * 4, 1, 1)
  up = np.asarray(fir_ops.upsample_conv_2d(x.transpose(0, 2, 3, 1), hwio, k=(1, 3, 3, 1)))
  assert relative_error(up.transpose(0, 3, 1, 2), expected_up) < 1e-5

  x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
  padded = _fir_filter_nchw(x, fir, 2, 2)
  expected_down = np.stack([np.stack([
      np.einsum("ncpq,ocpq->no", padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], weight)
      for j in range(3)], -1) for i in range(3)], -2)
  down = np.asarray(fir_ops.conv_downsample_2d(x.transpose(0, 2, 3, 1), hwio, k=(1, 3, 3, 1)))
  assert relative_error(down.transpose(0, 3, 1, 2), expected_down) < 1e-5


# ----------------------------------------------------------------------------------------------
# Errors: one clear message naming the file


def _modified_reference(tmp_path, change, name="bad.pth"):
  obj = pytorch_io.load(PTH_FILE)
  change(obj)
  path = str(tmp_path / name)
  pytorch_io.save(obj, path)
  return path


def _drop_tensor(obj):
  keys = list(obj["model"])
  index = keys.index("module.all_modules.4.Conv_1.bias")
  del obj["model"]["module.all_modules.4.Conv_1.bias"]
  del obj["ema"]["shadow_params"][index - 1]  # parameter index (sigmas is a buffer)


def _misshape_tensor(obj):
  index = list(obj["model"]).index("module.all_modules.3.weight")
  for holder, key in ((obj["model"], "module.all_modules.3.weight"),
                      (obj["ema"]["shadow_params"], index - 1)):
    holder[key] = np.zeros((8, 3, 5, 5), np.float32)


def _extra_tensor(obj):
  obj["model"]["module.all_modules.4.Extra_0.weight"] = np.zeros((3,), np.float32)
  obj["ema"]["shadow_params"].append(np.zeros((3,), np.float32))


@pytest.mark.parametrize("change, pattern", [
    (lambda o: o.pop("ema"), r"lacks \['ema'\].*not a score_sde_pytorch checkpoint"),
    (lambda o: o.__setitem__("model", [1, 2]), "'model' is not a state dict"),
    (_drop_tensor, r"1 missing from the file: all_modules\.4\.Conv_1\.bias \(8,\) for "
                   r"params/ResnetBlockBigGANpp_0/Conv_1/bias"),
    (_misshape_tensor, r"1 mis-shaped: all_modules\.3\.weight: file \(8, 3, 5, 5\), model "
                       r"expects \(8, 3, 3, 3\) for params/Conv_0/kernel"),
    (_extra_tensor, r"1 unmatched tensors in the file: all_modules\.4\.Extra_0\.weight \(3,\)"),
    (lambda o: o["ema"]["shadow_params"].pop(1), r"ema\.shadow_params has 288 tensors, one per "
                                                 r"trainable parameter, but .* do not follow "
                                                 r"the model's parameter order"),
    (lambda o: o["ema"]["shadow_params"].reverse(), r"289 tensors, one per parameter, but .* do "
                                                    r"not follow the model's parameter order"),
    (lambda o: o["ema"].__setitem__("shadow_params", o["ema"]["shadow_params"][:5]),
     r"ema\.shadow_params has 5 tensors but the state dict has 289 parameters \(288 "
     r"trainable\); they cannot be matched"),
    (lambda o: o["model"].__setitem__("module.sigmas", o["model"]["module.sigmas"][:100]),
     r"buffer mismatches: sigmas \(100,\) differs from models\.utils\.get_sigmas"),
    (lambda o: o["model"].pop("module.sigmas"), r"sigmas is absent"),
])
def test_bad_checkpoint_contents_name_the_file(tmp_path, reference, change, pattern):
  path = _modified_reference(tmp_path, change)
  with pytest.raises(checkpoints.CheckpointError, match=pattern) as raised:
    checkpoints.load_score_sde_pytorch(path, reference["config"])
  assert path in str(raised.value)


def _write(path, data):
  path.write_bytes(data)
  return str(path)


def _legacy_reference_bytes(tmp_path):
  path = str(tmp_path / "legacy_full.pth")
  pytorch_io.save(pytorch_io.load(PTH_FILE), path, legacy=True)
  with open(path, "rb") as f:
    return f.read()


def _zip_with_pickle(tmp_path, data_pkl):
  path = tmp_path / "global.pth"
  with open(path, "wb") as f:
    pytorch_io._write_zip_records(f, "global", [("data.pkl", data_pkl)])
  return str(path)


@pytest.mark.parametrize("make, pattern", [
    (lambda d: _write(d / "empty.pth", b""), "is empty"),
    (lambda d: _write(d / "cut.pth", open(PTH_FILE, "rb").read()[:40000]),
     "truncated or damaged"),
    (lambda d: _write(d / "cut_legacy.pth", _legacy_reference_bytes(d)[:500000]),
     r"truncated"),
    (lambda d: _write(d / "garbage.pth", np.random.default_rng(0).bytes(4096)),
     "not a readable PyTorch file|is it a PyTorch file at all"),
    (lambda d: _write(d / "plain_pickle.pth", pickle.dumps({"model": 1}, protocol=2)),
     "not the PyTorch magic number"),
    (lambda d: _write(d / "counter.pth", pickle.dumps(collections.Counter(), protocol=2)),
     r"asks for the Python object collections\.Counter"),
    (lambda d: _zip_with_pickle(d, b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R."),
     r"asks for the Python object os\.system.*was not loaded"),
    (lambda d: _write(d / "not_torch.zip", _zip_bytes(d)), "not a PyTorch file"),
    (lambda d: _modified_reference(d, lambda o: o.clear()), r"lacks \['model', 'ema', 'step'\]"),
])
def test_unreadable_files_name_the_path(tmp_path, reference, make, pattern):
  path = make(tmp_path)
  with pytest.raises(checkpoints.CheckpointError, match=pattern) as raised:
    checkpoints.load_score_sde_pytorch(path, reference["config"])
  assert path in str(raised.value)


def _zip_bytes(directory):
  path = directory / "plain.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("readme.txt", "not a checkpoint")
  return path.read_bytes()


def test_reader_refuses_other_globals_directly(tmp_path):
  path = _write(tmp_path / "counter.pth", pickle.dumps(collections.Counter(), protocol=2))
  with pytest.raises(pytorch_io.PyTorchFileError, match="collections.Counter"):
    pytorch_io.load(path)
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    pytorch_io.load(str(tmp_path / "nowhere.pth"))


def test_unsupported_network_is_a_clear_error(reference):
  config = reference["config"].copy_and_resolve_references()
  config.model.name = "ncsn"
  config.model.normalization = "InstanceNorm++"
  config.model.nonlinearity = "elu"
  config.model.interpolation = "bilinear"
  config.training.continuous = False
  with pytest.raises(checkpoints.CheckpointError, match=r"ncsn.*cannot run") as raised:
    checkpoints.load_score_sde_pytorch(PTH_FILE, config)
  assert PTH_FILE in str(raised.value)


# ----------------------------------------------------------------------------------------------
# Finding and dispatching


def _link(src, dst):
  dst.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, dst)
  return str(dst)


def test_find_checkpoint_finds_pth_files(tmp_path):
  released = os.path.join(GOLDEN_DIR, "score_sde_checkpoint", "ncsnpp_ffhq_small", "checkpoints",
                          "checkpoint_3")
  folder = tmp_path / "checkpoints"
  pth = _link(PTH_FILE, folder / "checkpoint_26.pth")
  assert checkpoints.find_checkpoint(str(tmp_path)) == pth
  assert checkpoints.find_checkpoint(str(tmp_path), step=26) == pth
  msgpack = _link(released, folder / "checkpoint_3")
  assert checkpoints.find_checkpoint(str(tmp_path)) == pth  # the newest step, either format
  assert checkpoints.find_checkpoint(str(tmp_path), step=3) == msgpack
  both = _link(released, folder / "checkpoint_26")
  assert checkpoints.find_checkpoint(str(tmp_path)) == both  # msgpack wins for one step
  with pytest.raises(FileNotFoundError, match=r"no checkpoint_5 .*\[3, 26\]"):
    checkpoints.find_checkpoint(str(tmp_path), step=5)

  lone = tmp_path / "other"
  single = _link(PTH_FILE, lone / "checkpoints" / "checkpoint.pth")  # score_sde_pytorch's meta
  assert checkpoints.find_checkpoint(str(lone)) == single
  _link(PTH_FILE, lone / "checkpoints" / "ffhq.pth")
  with pytest.raises(FileNotFoundError, match="several PyTorch checkpoints"):
    checkpoints.find_checkpoint(str(lone))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"No checkpoint_<n> file \(nor \*\.pth\)"):
    checkpoints.find_checkpoint(str(empty))


def test_load_checkpoint_dispatches_on_the_file(tmp_path, reference, imported):
  workdir = tmp_path / "run"
  _link(PTH_FILE, workdir / "checkpoints" / "checkpoint_26.pth")
  variables, step = checkpoints.load_checkpoint(str(workdir), reference["config"])
  assert step == 26
  _assert_same_variables(variables, imported["ema"])
  released = os.path.join(GOLDEN_DIR, "score_sde_checkpoint", "ncsnpp_ffhq_small")
  variables, step = checkpoints.load_checkpoint(released, reference["config"])
  expected, expected_step = checkpoints.load_score_sde(released, config=reference["config"])
  assert step == expected_step
  _assert_same_variables(variables, expected)
  # A PyTorch file is recognised by its contents too, whatever its name.
  renamed = _link(PTH_FILE, tmp_path / "renamed" / "checkpoint_26")
  variables, step = checkpoints.load_checkpoint(renamed, reference["config"], step=26)
  assert step == 26
  _assert_same_variables(variables, imported["ema"])


# ----------------------------------------------------------------------------------------------
# The converter


def _convert(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tools.convert_checkpoint", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_converter_writes_a_released_format_checkpoint(tmp_path, reference, imported):
  config_file = tmp_path / "ffhq_small.py"
  config_file.write_text(
      "import json, ml_collections, numpy as np\n"
      f"_CASE = {os.path.join(PTH_DIR, 'reference.npz')!r}\n"
      "def get_config():\n"
      "  return ml_collections.ConfigDict(json.loads(str(np.load(_CASE)['config_json'])))\n")
  output = tmp_path / "converted"
  args = ("--config", str(config_file), "--input", PTH_FILE, "--output", str(output))
  result = _convert(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  written = str(output / "checkpoints" / "checkpoint_26")
  assert result.stdout.strip().splitlines()[-1] == written
  assert os.listdir(output / "checkpoints") == ["checkpoint_26"]  # no temporary file left

  variables, step = checkpoints.load_score_sde(str(output), config=reference["config"])
  assert step == 26
  _assert_same_variables(variables, imported["ema"])
  assert relative_error(_forward(variables, reference), reference["y"]) < 1e-4
  state = checkpoints.read_state(written)
  assert sorted(state) == ["ema_rate", "lr", "model_state", "optimizer", "params_ema", "step"]
  assert float(state["ema_rate"]) == 0.9999 and float(state["lr"]) == 2e-4
  _assert_same_variables({"params": state["optimizer"]["target"]}, imported["raw"])

  again = _convert(*args)  # an existing checkpoint is never replaced silently
  assert again.returncode != 0 and "already exists" in again.stderr and "--overwrite" in \
      again.stderr
