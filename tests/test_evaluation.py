"""Evaluation: the FID Inception-v3 port, its weight file, FID / KID / IS, statistics, `--mode eval`.

No real Inception weights are needed: the tests write a randomly initialised state dict in
pytorch-fid's names and PyTorch layouts (legacy serialisation, as the real file) and check

- the Flax module against a numpy forward written here in PyTorch's terms (NCHW activations, OIHW
  weights, torchvision's layer table with pytorch-fid's pooling patches), at a small input size
  (75 px, the smallest the network takes) and once at the real 299 px;
- the variable tree against that layer table (names, shapes, 23,885,392 numbers);
- the metrics against closed forms; the end-to-end mode at 75 px on generated sample files.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import pytorch_io
from evaluation import evaluate as evaluation
from evaluation import inception
from evaluation import metrics
from evaluation import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = 75  # smallest input of the network: Mixed_7a's output is 1×1


# ----------------------------------------------------------------------------------------------
# pytorch-fid's FID Inception written out in PyTorch's terms


def _torch_layer_table():
  """(name, in channels, out channels, (kh, kw)) of every BasicConv2d, then fc, per torchvision's
  Inception3(num_classes=1008, aux_logits=False) with pytorch-fid's FID blocks."""
  table = [("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)),
           ("Conv2d_2b_3x3", 32, 64, (3, 3)), ("Conv2d_3b_1x1", 64, 80, (1, 1)),
           ("Conv2d_4a_3x3", 80, 192, (3, 3))]

  def block(name, rows):
    table.extend((f"{name}.{branch}", cin, cout, k) for branch, cin, cout, k in rows)

  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    block(name, [("branch1x1", cin, 64, (1, 1)), ("branch5x5_1", cin, 48, (1, 1)),
                 ("branch5x5_2", 48, 64, (5, 5)), ("branch3x3dbl_1", cin, 64, (1, 1)),
                 ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3)),
                 ("branch_pool", cin, pool, (1, 1))])
  block("Mixed_6a", [("branch3x3", 288, 384, (3, 3)), ("branch3x3dbl_1", 288, 64, (1, 1)),
                     ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))])
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    block(name, [("branch1x1", 768, 192, (1, 1)), ("branch7x7_1", 768, c7, (1, 1)),
                 ("branch7x7_2", c7, c7, (1, 7)), ("branch7x7_3", c7, 192, (7, 1)),
                 ("branch7x7dbl_1", 768, c7, (1, 1)), ("branch7x7dbl_2", c7, c7, (7, 1)),
                 ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)),
                 ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", 768, 192, (1, 1))])
  block("Mixed_7a", [("branch3x3_1", 768, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)),
                     ("branch7x7x3_1", 768, 192, (1, 1)), ("branch7x7x3_2", 192, 192, (1, 7)),
                     ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, (3, 3))])
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    block(name, [("branch1x1", cin, 320, (1, 1)), ("branch3x3_1", cin, 384, (1, 1)),
                 ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)),
                 ("branch3x3dbl_1", cin, 448, (1, 1)), ("branch3x3dbl_2", 448, 384, (3, 3)),
                 ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
                 ("branch_pool", cin, 192, (1, 1))])
  return table


def random_state_dict(seed=0, with_counters=True):
  """A random FID-Inception state dict in PyTorch's names and layouts (He-scaled convs, batch
  norms near identity so activations stay O(1)); with the `num_batches_tracked` counters that
  PyTorch >= 0.4.1 adds."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, cin, cout, (kh, kw) in _torch_layer_table():
    state[f"{name}.conv.weight"] = (rng.standard_normal((cout, cin, kh, kw))
                                    * np.sqrt(2.0 / (cin * kh * kw))).astype(np.float32)
    state[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f"{name}.bn.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f"{name}.bn.running_mean"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    if with_counters:
      state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  state["fc.weight"] = (rng.standard_normal((1008, 2048)) / np.sqrt(2048)).astype(np.float32)
  state["fc.bias"] = (0.1 * rng.standard_normal(1008)).astype(np.float32)
  return state


def _conv(x, w, stride=1, padding=(0, 0)):
  """PyTorch Conv2d without bias: x (N, C, H, W), w (O, C, kh, kw)."""
  x = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
  kh, kw = w.shape[2:]
  patches = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  return np.einsum("nchwij,ocij->nohw", patches, w, optimize=True)


def _basic(state, name, x, stride=1, padding=(0, 0)):
  """BasicConv2d: conv, BatchNorm2d(eps=0.001) with running statistics, ReLU."""
  y = _conv(x, state[f"{name}.conv.weight"].astype(np.float64), stride, padding)
  p = {k: state[f"{name}.bn.{k}"].astype(np.float64)[None, :, None, None]
       for k in ("weight", "bias", "running_mean", "running_var")}
  y = (y - p["running_mean"]) / np.sqrt(p["running_var"] + 0.001) * p["weight"] + p["bias"]
  return np.maximum(y, 0.0)


def _max_pool(x, stride, padding=0):
  x = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2), constant_values=-np.inf)
  return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(4, 5))


def _avg_pool_exclude_pad(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  ones = np.pad(np.ones(x.shape[2:]), 1)
  sums = sliding_window_view(padded, (3, 3), axis=(2, 3)).sum(axis=(4, 5))
  return sums / sliding_window_view(ones, (3, 3)).sum(axis=(2, 3))


def reference_forward(state, images_nhwc, scaling="pytorch_fid"):
  """pytorch-fid's FID Inception in float64 numpy: images (N, H, W, 3) in [0, 255] -> pool_3
  (N, 2048), logits (N, 1008). Input scaling pytorch-fid's 2 (x / 255) - 1, or the TensorFlow
  graph's (x - 128) / 128."""
  s = state
  x = np.transpose(np.asarray(images_nhwc, np.float64), (0, 3, 1, 2))
  x = 2 * (x / 255.0) - 1 if scaling == "pytorch_fid" else (x - 128.0) / 128.0
  x = _basic(s, "Conv2d_1a_3x3", x, stride=2)
  x = _basic(s, "Conv2d_2a_3x3", x)
  x = _basic(s, "Conv2d_2b_3x3", x, padding=(1, 1))
  x = _max_pool(x, 2)
  x = _basic(s, "Conv2d_3b_1x1", x)
  x = _basic(s, "Conv2d_4a_3x3", x)
  x = _max_pool(x, 2)
  for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    b1 = _basic(s, f"{n}.branch1x1", x)
    b5 = _basic(s, f"{n}.branch5x5_2", _basic(s, f"{n}.branch5x5_1", x), padding=(2, 2))
    b3 = _basic(s, f"{n}.branch3x3dbl_1", x)
    b3 = _basic(s, f"{n}.branch3x3dbl_2", b3, padding=(1, 1))
    b3 = _basic(s, f"{n}.branch3x3dbl_3", b3, padding=(1, 1))
    bp = _basic(s, f"{n}.branch_pool", _avg_pool_exclude_pad(x))
    x = np.concatenate([b1, b5, b3, bp], axis=1)
  n = "Mixed_6a"
  b3 = _basic(s, f"{n}.branch3x3", x, stride=2)
  bd = _basic(s, f"{n}.branch3x3dbl_1", x)
  bd = _basic(s, f"{n}.branch3x3dbl_2", bd, padding=(1, 1))
  bd = _basic(s, f"{n}.branch3x3dbl_3", bd, stride=2)
  x = np.concatenate([b3, bd, _max_pool(x, 2)], axis=1)
  for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    b1 = _basic(s, f"{n}.branch1x1", x)
    b7 = _basic(s, f"{n}.branch7x7_1", x)
    b7 = _basic(s, f"{n}.branch7x7_2", b7, padding=(0, 3))
    b7 = _basic(s, f"{n}.branch7x7_3", b7, padding=(3, 0))
    bd = _basic(s, f"{n}.branch7x7dbl_1", x)
    for k, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
      bd = _basic(s, f"{n}.branch7x7dbl_{k}", bd, padding=pad)
    bp = _basic(s, f"{n}.branch_pool", _avg_pool_exclude_pad(x))
    x = np.concatenate([b1, b7, bd, bp], axis=1)
  n = "Mixed_7a"
  b3 = _basic(s, f"{n}.branch3x3_2", _basic(s, f"{n}.branch3x3_1", x), stride=2)
  b7 = _basic(s, f"{n}.branch7x7x3_1", x)
  b7 = _basic(s, f"{n}.branch7x7x3_2", b7, padding=(0, 3))
  b7 = _basic(s, f"{n}.branch7x7x3_3", b7, padding=(3, 0))
  b7 = _basic(s, f"{n}.branch7x7x3_4", b7, stride=2)
  x = np.concatenate([b3, b7, _max_pool(x, 2)], axis=1)
  for n, pool in (("Mixed_7b", "avg"), ("Mixed_7c", "max")):
    b1 = _basic(s, f"{n}.branch1x1", x)
    b3 = _basic(s, f"{n}.branch3x3_1", x)
    b3 = np.concatenate([_basic(s, f"{n}.branch3x3_2a", b3, padding=(0, 1)),
                         _basic(s, f"{n}.branch3x3_2b", b3, padding=(1, 0))], axis=1)
    bd = _basic(s, f"{n}.branch3x3dbl_1", x)
    bd = _basic(s, f"{n}.branch3x3dbl_2", bd, padding=(1, 1))
    bd = np.concatenate([_basic(s, f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)),
                         _basic(s, f"{n}.branch3x3dbl_3b", bd, padding=(1, 0))], axis=1)
    pooled = _avg_pool_exclude_pad(x) if pool == "avg" else _max_pool(x, 1, padding=1)
    bp = _basic(s, f"{n}.branch_pool", pooled)
    x = np.concatenate([b1, b3, bd, bp], axis=1)
  pool = x.mean(axis=(2, 3))
  logits = pool @ s["fc.weight"].astype(np.float64).T + s["fc.bias"]
  return pool, logits


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected))
               / np.max(np.abs(expected)))


# ----------------------------------------------------------------------------------------------
# Fixtures: one weight file, one jitted forward per input size


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict()


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory, state_dict):
  """The random weights written like pytorch-fid's file: legacy serialisation."""
  path = str(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_FILENAME)
  pytorch_io.save(state_dict, path, legacy=True)
  return path


@pytest.fixture(scope="module")
def jitted_apply():
  return jax.jit(inception.InceptionV3().apply)


@pytest.fixture(scope="module")
def small_images():
  rng = np.random.default_rng(1)
  return rng.integers(0, 256, (2, SMALL, SMALL, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The module


def test_variables_match_pytorch_layer_table_and_count():
  shapes = inception.variable_shapes()
  leaves = jax.tree_util.tree_leaves(shapes)
  params = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(shapes["params"]))
  stats = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(shapes["batch_stats"]))
  # 94 BasicConv2d (conv weight + bn weight/bias + 2 running statistics) and fc weight/bias.
  assert len(leaves) == 94 * 5 + 2
  assert params == 23_850_960  # trainable: convs, batch norm scale/bias, fc (1008 classes)
  assert stats == 34_432       # batch norm running mean and variance: 2 x 17,216 channels
  assert params + stats == 23_885_392
  expected = {k: v.shape for k, v in random_state_dict(with_counters=False).items()}
  mapped = {name: shape for name, (_, shape) in inception._torch_names().items()}
  assert mapped == expected


def test_output_and_stage_shapes():
  model = inception.InceptionV3()
  variables = inception.variable_shapes()
  for size in (inception.INPUT_SIZE, SMALL):
    images = jax.ShapeDtypeStruct((3, size, size, 3), np.float32)
    out, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables, images)
    assert {k: v.shape for k, v in out.items()} == {
        "pool": (3, 2048), "logits": (3, 1008), "logits_unbiased": (3, 1008)}
    stages = {k: v["__call__"][0].shape[1:] for k, v in state["intermediates"].items()
              if k.startswith(("Mixed", "Conv2d"))}
    if size == inception.INPUT_SIZE:
      assert stages["Conv2d_1a_3x3"] == (149, 149, 32)
      assert stages["Conv2d_4a_3x3"] == (71, 71, 192)
      assert stages["Mixed_5b"] == (35, 35, 256)
      assert stages["Mixed_5d"] == (35, 35, 288)
      assert stages["Mixed_6a"] == (17, 17, 768)
      assert stages["Mixed_6e"] == (17, 17, 768)
      assert stages["Mixed_7a"] == (8, 8, 1280)
      assert stages["Mixed_7c"] == (8, 8, 2048)
    else:
      assert stages["Mixed_7c"] == (1, 1, 2048)
  with pytest.raises(ValueError, match="at least 75"):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 74, 74, 3), np.float32))


def test_state_dict_round_trip(state_dict):
  variables = inception.state_dict_to_variables(state_dict)
  back = inception.variables_to_state_dict(variables)
  expected = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert kernel.shape == (1, 7, 128, 128)  # (1, 7) conv: kh 1, kw 7, HWIO
  np.testing.assert_array_equal(kernel[0, :, 3, 5],
                                state_dict["Mixed_6b.branch7x7_2.conv.weight"][5, 3, 0, :])


def test_weight_file_gives_reference_features_twice(weight_file, state_dict, jitted_apply,
                                                    small_images):
  """Legacy-format file -> the same features on each load, equal to the numpy PyTorch-semantics
  forward (pooling variants, padding, layouts, BN eps, the 1008 logits)."""
  first, info = inception.load_variables(weight_file)
  second, _ = inception.load_variables(weight_file)
  assert info["official"] is False and len(info["sha256"]) == 64
  out1 = jax.device_get(jitted_apply(first, small_images))
  out2 = jax.device_get(jitted_apply(second, small_images))
  for key in out1:
    np.testing.assert_array_equal(out1[key], out2[key])
  pool, logits = reference_forward(state_dict, small_images)
  assert _relative_error(out1["pool"], pool) < 1e-5
  assert _relative_error(out1["logits"], logits) < 1e-5
  unbiased = pool @ state_dict["fc.weight"].astype(np.float64).T
  assert _relative_error(out1["logits_unbiased"], unbiased) < 1e-5


def test_real_input_size_matches_reference(state_dict):
  """One image through the 299 px network: every stage at its real size."""
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (1, 299, 299, 3)).astype(np.float32)
  variables = inception.state_dict_to_variables(state_dict)
  out = jax.device_get(jax.jit(inception.InceptionV3().apply)(variables, image))
  pool, logits = reference_forward(state_dict, image)
  assert _relative_error(out["pool"], pool) < 1e-5
  assert _relative_error(out["logits"], logits) < 1e-5


def test_zip_format_and_converted_npz_load_the_same(weight_file, state_dict, tmp_path):
  zipped = str(tmp_path / "zipped.pth")
  pytorch_io.save(state_dict, zipped, legacy=False)
  from tools import convert_inception  # pylint: disable=g-import-not-at-top
  npz = convert_inception.convert(weight_file, str(tmp_path / "inception.npz"))
  reference, info = inception.load_variables(weight_file)
  for path in (zipped, npz):
    loaded, loaded_info = inception.load_variables(path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, reference)
  assert loaded_info["sha256"] == info["sha256"]  # the .npz keeps the .pth's hash
  with pytest.raises(FileExistsError):
    convert_inception.convert(weight_file, npz)


def test_truncated_and_wrong_files_fail_clearly(weight_file, state_dict, tmp_path):
  truncated = tmp_path / "truncated.pth"
  with open(weight_file, "rb") as f:
    truncated.write_bytes(f.read()[:os.path.getsize(weight_file) // 2])
  with pytest.raises(inception.InceptionWeightsError) as error:
    inception.load_variables(str(truncated))
  message = str(error.value)
  assert "truncated.pth" in message and "truncated" in message
  assert inception.WEIGHTS_SHA256_PREFIX in message

  broken = dict(state_dict)
  del broken["Mixed_7c.branch_pool.bn.running_var"]
  broken["Mixed_5b.branch1x1.conv.weight"] = broken["Mixed_5b.branch1x1.conv.weight"][:8]
  broken["extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(inception.InceptionWeightsError,
                     match=r"missing: Mixed_7c.branch_pool.bn.running_var.*unexpected: "
                           r"extra.weight.*wrong shape: Mixed_5b.branch1x1.conv.weight"):
    inception.state_dict_to_variables(broken, source="'broken.pth'")


def test_missing_weights_say_which_file_and_where(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(inception.InceptionWeightsNotFound) as error:
    inception.resolve_weights_path("")
  message = str(error.value)
  for needed in (inception.WEIGHTS_FILENAME, "6726825d", inception.WEIGHTS_ENV,
                 "config.eval.inception_weights", "nothing is downloaded"):
    assert needed in message
  missing = str(tmp_path / "nowhere.pth")
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    inception.resolve_weights_path(missing)
  monkeypatch.setenv(inception.WEIGHTS_ENV, missing)
  with pytest.raises(FileNotFoundError, match=inception.WEIGHTS_ENV):
    inception.resolve_weights_path("")
  cached = tmp_path / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILENAME
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"x")
  monkeypatch.delenv(inception.WEIGHTS_ENV)
  assert inception.resolve_weights_path("") == str(cached)


# ----------------------------------------------------------------------------------------------
# Input handling and batched features


def test_resize_modes():
  row = np.array([[[[0], [10]]]], np.uint8).repeat(2, axis=1)  # (1, 2, 2, 1): columns 0, 10
  tf = inception.resize_images(row, "tf_legacy", size=4)
  torch = inception.resize_images(row, "pytorch_bilinear", size=4)
  assert tf.shape == torch.shape == (1, 4, 4, 3)  # grayscale repeated to RGB
  np.testing.assert_allclose(tf[0, 0, :, 0], [0, 5, 10, 10])       # src = dst * in / out
  np.testing.assert_allclose(torch[0, 0, :, 0], [0, 2.5, 7.5, 10])  # half-pixel centres
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  clean = inception.resize_images(images, "clean", size=SMALL)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  channel = np.asarray(Image.fromarray(images[1, :, :, 2].astype(np.float32)).resize(
      (SMALL, SMALL), Image.Resampling.BICUBIC))
  np.testing.assert_allclose(clean[1, :, :, 2], np.clip(channel, 0, 255))
  assert clean.dtype == np.float32 and 0 <= clean.min() and clean.max() <= 255
  assert not np.array_equal(clean, np.round(clean))  # not requantised to uint8
  constant = np.full((1, 40, 40, 3), 77, np.uint8)
  for mode in inception.RESIZE_MODES:
    np.testing.assert_allclose(inception.resize_images(constant, mode, size=SMALL), 77, atol=1e-3)
    same = inception.resize_images(images, mode, size=32)
    np.testing.assert_array_equal(same, images.astype(np.float32))
  with pytest.raises(ValueError, match="uint8"):
    inception.resize_images(images.astype(np.float32), "clean")
  with pytest.raises(ValueError, match="resize"):
    inception.resize_images(images, "bicubic")


def test_input_scaling():
  x = np.array([0.0, 128.0, 255.0])
  np.testing.assert_allclose(inception.scale_input(x, "pytorch_fid"), [-1, 1 / 255, 1])
  np.testing.assert_allclose(inception.scale_input(x, "tensorflow"), [-1, 0, 127 / 128])
  with pytest.raises(ValueError, match="input_scaling"):
    inception.scale_input(x, "imagenet")
  assert inception.SCALING_OF_RESIZE == {"clean": "tensorflow", "tf_legacy": "tensorflow",
                                         "pytorch_bilinear": "pytorch_fid"}


def test_feature_extractor_pads_and_splits_over_devices(weight_file, state_dict):
  """Clean resize with clean-fid's input scaling, batches padded and split over 4 devices."""
  variables, _ = inception.load_variables(weight_file)
  extractor = inception.FeatureExtractor(variables, resize="clean", batch_size=3,
                                         image_size=SMALL)
  assert extractor.input_scaling == "tensorflow"
  assert extractor.batch_size % len(jax.local_devices()) == 0
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (6, 24, 24, 3)).astype(np.uint8)
  out = extractor(images)
  assert out["pool"].shape == (6, 2048) and out["logits"].shape == (6, 1008)
  pool, _ = reference_forward(state_dict, inception.resize_images(images[:2], "clean", SMALL),
                              scaling="tensorflow")
  assert _relative_error(out["pool"][:2], pool) < 1e-5
  parts = list(extractor.batches([images[:1], images[1:]]))
  np.testing.assert_allclose(np.concatenate([p["pool"] for p in parts]), out["pool"],
                             rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Metrics


def test_frechet_distance_closed_form_and_sqrtm():
  rng = np.random.default_rng(5)
  # Diagonal (commuting) covariances: d² = |mu1 - mu2|² + Σ (sqrt(a) - sqrt(b))².
  a, b = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  for method in ("eigh", "sqrtm"):
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == (
        pytest.approx(closed, rel=1e-10))
  # One dimension: (m1 - m2)² + (s1 - s2)².
  assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
  # General covariances: against scipy.linalg.sqrtm written out.
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  x, y = rng.standard_normal((40, 16)), rng.standard_normal((16, 16))
  s1, s2 = x.T @ x / 40, y @ y.T / 16 + 0.1 * np.eye(16)
  m1, m2 = rng.standard_normal(16), rng.standard_normal(16)
  expected = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
  for method in ("eigh", "sqrtm"):
    assert metrics.frechet_distance(m1, s1, m2, s2, method=method) == pytest.approx(
        expected, rel=1e-8)
  # Singular covariances (fewer samples than dimensions) stay finite; identical sets give 0.
  few = rng.standard_normal((5, 32))
  assert abs(metrics.frechet_distance_of_features(few, few)) < 1e-9
  assert metrics.frechet_distance_of_features(few, few + 1.0) == pytest.approx(32.0, rel=1e-8)
  # Few samples against a full Gaussian: the N×N shortcut equals the D×D computation.
  full = metrics.frechet_distance(*metrics.mean_and_covariance(few), m2[:8].repeat(4), s2.repeat(
      2, axis=0).repeat(2, axis=1) + np.eye(32))
  shortcut = metrics.frechet_distance_to_gaussian(
      few, m2[:8].repeat(4), s2.repeat(2, axis=0).repeat(2, axis=1) + np.eye(32))
  assert shortcut == pytest.approx(full, rel=1e-9)
  mu_few, sigma_few = metrics.mean_and_covariance(few)
  assert abs(metrics.frechet_distance_to_gaussian(few, mu_few, sigma_few)) < 1e-9
  with pytest.raises(ValueError, match="Shapes"):
    metrics.frechet_distance(m1, s1, m2[:3], s2)


def test_kid_is_unbiased_and_detects_a_shift():
  rng = np.random.default_rng(6)
  real, fake = rng.standard_normal((600, 32)), rng.standard_normal((600, 32))
  same = metrics.kernel_inception_distance(real, fake, num_subsets=50, max_subset_size=200)
  assert same["subset_size"] == 200
  assert abs(same["mean"]) < 3 * same["std"] / np.sqrt(50) + 1e-4
  shifted = metrics.kernel_inception_distance(real, fake + 0.5, num_subsets=50,
                                              max_subset_size=200)
  assert shifted["mean"] > 10 * (abs(same["mean"]) + same["std"])
  # Unbiasedness: one subset of everything equals the formula written out.
  x, y = real[:50], fake[:50]
  k = lambda u, v: (u @ v.T / 32 + 1) ** 3  # pylint: disable=unnecessary-lambda-assignment
  m = 50
  expected = ((k(x, x).sum() - np.trace(k(x, x)) + k(y, y).sum() - np.trace(k(y, y)))
              / (m * (m - 1)) - 2 * k(x, y).sum() / m ** 2)
  one = metrics.kernel_inception_distance(x, y, num_subsets=1, max_subset_size=50)
  assert one["mean"] == pytest.approx(expected, rel=1e-10)


def test_whole_set_mmd_is_unbiased_at_unequal_sizes():
  """The digits benchmark's KID compares 1000 samples with 300 references: the estimator must
  average to zero for one distribution whatever the two sizes, and see a shift."""
  rng = np.random.default_rng(7)
  estimates = [metrics.unbiased_mmd2(rng.standard_normal((30, 8)), rng.standard_normal((90, 8)))
               for _ in range(400)]
  assert abs(np.mean(estimates)) < 3 * np.std(estimates) / np.sqrt(400)
  real, fake = rng.standard_normal((30, 8)), rng.standard_normal((90, 8)) + 0.5
  k = lambda u, v: (u @ v.T / 8 + 1) ** 3  # pylint: disable=unnecessary-lambda-assignment
  expected = ((k(real, real).sum() - np.trace(k(real, real))) / (30 * 29)
              + (k(fake, fake).sum() - np.trace(k(fake, fake))) / (90 * 89)
              - 2 * k(real, fake).sum() / (30 * 90))
  assert metrics.unbiased_mmd2(real, fake) == pytest.approx(expected, rel=1e-10)
  assert metrics.unbiased_mmd2(real, fake) > 10 * np.std(estimates)

def test_inception_score_limits():
  uniform = metrics.inception_score(np.zeros((100, 1008)))
  assert uniform["mean"] == pytest.approx(1.0, abs=1e-12) and uniform["std"] < 1e-12
  assert uniform["splits"] == 10
  confident = 50.0 * np.eye(8)[np.arange(80) % 8]  # every split: all 8 classes, certain
  assert metrics.inception_score(confident)["mean"] == pytest.approx(8.0, rel=1e-6)
  with pytest.raises(ValueError):
    metrics.inception_score(np.zeros((5, 10)), splits=10)


def test_precision_recall():
  rng = np.random.default_rng(7)
  real = rng.standard_normal((300, 8))
  same = metrics.precision_recall(real, rng.standard_normal((300, 8)))
  assert same["precision"] > 0.8 and same["recall"] > 0.8
  far = metrics.precision_recall(real, rng.standard_normal((300, 8)) + 100.0)
  assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_radial_deviation():
  amplitude = np.random.default_rng(8).uniform(0.1, 1.0, (16, 16))
  equal = metrics.radial_deviation(amplitude, amplitude, 8)
  assert equal["deviation"] == pytest.approx([1.0] * 8)
  assert equal["mean_abs_log_deviation"] == pytest.approx(0.0)
  doubled = metrics.radial_deviation(2 * amplitude, amplitude, 8)
  assert doubled["deviation"] == pytest.approx([2.0] * 8)
  with pytest.raises(ValueError, match="image sizes"):
    metrics.radial_deviation(amplitude, amplitude[:8], 8)


# ----------------------------------------------------------------------------------------------
# Statistics files


def test_feature_moments_and_subset():
  rng = np.random.default_rng(9)
  features = 100.0 + rng.standard_normal((500, 12))  # a large mean: shifted sums stay accurate
  moments = statistics.FeatureMoments()
  subset = statistics.FeatureSubset(64, seed=0)
  for start in range(0, 500, 70):
    moments.update(features[start:start + 70])
    subset.update(features[start:start + 70])
  np.testing.assert_allclose(moments.mean, features.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(moments.covariance, np.cov(features, rowvar=False), atol=1e-10)
  assert subset.rows.shape == (64, 12)
  assert all(any(np.array_equal(r, f) for f in features.astype(np.float32)) for r in subset.rows)


def test_statistics_files(tmp_path):
  rng = np.random.default_rng(10)
  pool = rng.standard_normal((50, 2048)).astype(np.float32)
  ours = statistics.save_statistics(
      str(tmp_path / "stats" / "cifar10_32.npz"),
      dict(mu=pool.mean(0), sigma=np.cov(pool, rowvar=False), features=pool, num_images=50,
           resize="clean"), dataset="CIFAR10", image_size=32)
  assert ours == statistics.stats_path(str(tmp_path), "CIFAR10", 32)
  loaded = statistics.load_statistics(ours)
  assert loaded["layout"] == "mu_sigma" and loaded["num_images"] == 50
  assert loaded["resize"] == "clean" and loaded["dataset"] == "CIFAR10"
  np.testing.assert_array_equal(loaded["features"], pool)
  # score_sde's layout: all pool_3 features.
  np.savez(tmp_path / "cifar10_stats.npz", pool_3=pool)
  score_sde = statistics.load_statistics(str(tmp_path / "cifar10_stats.npz"))
  assert score_sde["layout"] == "pool_3"
  np.testing.assert_allclose(score_sde["mu"], pool.mean(0, dtype=np.float64), atol=1e-12)
  np.testing.assert_allclose(score_sde["sigma"], np.cov(pool.astype(np.float64), rowvar=False),
                             atol=1e-12)
  with pytest.raises(FileNotFoundError, match="--mode stats"):
    statistics.load_statistics(str(tmp_path / "absent.npz"))
  np.savez(tmp_path / "other.npz", something=pool)
  with pytest.raises(ValueError, match="pool_3"):
    statistics.load_statistics(str(tmp_path / "other.npz"))


def test_sample_files_order_and_checks(tmp_path):
  for name in ("samples_10.npz", "samples_2.npz", "samples_2_host1.npz", "samples_0.npz"):
    np.savez(tmp_path / name, samples=np.zeros((1, 4, 4, 3), np.uint8))
  names = [os.path.basename(p) for p in statistics.sample_files(str(tmp_path))]
  assert names == ["samples_0.npz", "samples_2.npz", "samples_2_host1.npz", "samples_10.npz"]
  np.savez(tmp_path / "samples_11.npz", samples=np.zeros((1, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    list(statistics.iterate_samples(statistics.sample_files(str(tmp_path))))
  with pytest.raises(FileNotFoundError, match="--mode sample"):
    statistics.sample_files(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------------------------
# --mode eval end to end


def _eval_config(**eval_fields):
  from configs.tiny import ncsnpp_ve_continuous  # pylint: disable=g-import-not-at-top
  config = ncsnpp_ve_continuous.get_config()
  for key, value in eval_fields.items():
    config.eval[key] = value
  config.eval.inception_batch_size = 4
  config.eval.kid_subsets = 5
  return config


def test_eval_mode_end_to_end(tmp_path, weight_file, monkeypatch):
  """run_lib.evaluate on three sample files (16 px RGB) at a 75 px network input: stand-in
  statistics of other images (mu, sigma, features, dct_amplitude); metrics.json is complete,
  reruns give the same numbers, and samples against their own statistics give FID 0."""
  import run_lib  # pylint: disable=g-import-not-at-top
  from tdas import stats as tdas_stats  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inception, "INPUT_SIZE", SMALL)
  monkeypatch.setenv(inception.WEIGHTS_ENV, weight_file)
  workdir = str(tmp_path)
  folder = tmp_path / "eval"
  folder.mkdir()
  rng = np.random.default_rng(11)
  samples = rng.integers(0, 256, (10, 16, 16, 3)).astype(np.uint8)
  for r, (lo, hi) in enumerate(((0, 4), (4, 8), (8, 10))):
    np.savez(folder / f"samples_{r}.npz", samples=samples[lo:hi])
  data = np.clip(rng.normal(128, 40, (12, 16, 16, 3)), 0, 255).astype(np.uint8)
  config = _eval_config()

  # Errors before any work: no statistics, then no frequency file.
  with pytest.raises(FileNotFoundError, match=r"stats/cifar10_16\.npz"):
    run_lib.evaluate(config, workdir)

  extractor, info = inception.extractor_from_config(config)
  assert extractor.image_size == SMALL
  stats = statistics.feature_statistics(data, extractor, progress=False)
  stats["inception_sha256"] = info["sha256"]
  statistics.save_statistics(statistics.stats_path(workdir, "CIFAR10", 16), stats)
  frequency_file = str(tmp_path / "frequency.npz")
  np.savez(frequency_file, dct_amplitude=tdas_stats.mean_amplitude(data / 255.0))
  config.eval.frequency_stats_file = frequency_file + ".missing"
  with pytest.raises(FileNotFoundError, match="frequency_stats_file"):
    run_lib.evaluate(config, workdir)
  config.eval.frequency_stats_file = frequency_file
  config.eval.frequency_bins = 8

  result = run_lib.evaluate(config, workdir)
  written = json.loads((folder / "metrics.json").read_text())
  assert written["fid"] == pytest.approx(result["fid"])
  assert written["num_samples"] == 10 and written["image_shape"] == [16, 16, 3]
  assert written["sample_files"] == ["samples_0.npz", "samples_1.npz", "samples_2.npz"]
  assert np.isfinite(written["fid"]) and written["fid"] > 0
  assert written["kid"]["subset_size"] == 10 and written["kid"]["num_subsets"] == 5
  assert written["inception_score"]["mean"] >= 1.0 and written["inception_score"]["splits"] == 10
  deviation = written["frequency_deviation"]["dct"]
  assert len(deviation["deviation"]) == 8 and deviation["mean_abs_log_deviation"] > 0
  assert written["inception_sha256"] == info["sha256"] and written["official_weights"] is False
  assert written["resize"] == "clean" and written["inception_input_size"] == SMALL
  assert written["input_scaling"] == "tensorflow"
  assert not [n for n in written["notes"] if "weights" in n]

  # Safe to rerun: same numbers, file replaced atomically (no temporary files left).
  again = run_lib.evaluate(config, workdir)
  assert again["fid"] == result["fid"] and again["kid"] == result["kid"]
  assert sorted(os.listdir(folder)) == ["metrics.json", "samples_0.npz", "samples_1.npz",
                                        "samples_2.npz"]

  # Against statistics of the samples themselves: FID 0. The frequency file is found where
  # `--mode stats` writes it.
  own = statistics.feature_statistics(
      statistics.iterate_samples(statistics.sample_files(str(folder))), extractor,
      progress=False)
  own_file = statistics.save_statistics(str(tmp_path / "own.npz"), own)
  config.eval.stats_file = own_file
  config.eval.frequency_stats_file = ""
  default_frequency = statistics.frequency_stats_path(workdir, "CIFAR10", 16)
  assert default_frequency.endswith(os.path.join("stats", "frequency_cifar10_16.npz"))
  os.replace(frequency_file, default_frequency)
  own_result = evaluation.evaluate_folder(config, workdir, str(folder), extractor, info)
  assert abs(own_result["fid"]) < 1e-6 * result["fid"]
  assert own_result["frequency_stats_file"] == default_frequency
  assert own_result["frequency_deviation"] == result["frequency_deviation"]


def test_eval_mode_command_line_errors(tmp_path):
  """`main.py --mode eval` stops with one message: no samples; then missing weights."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TORCH_HOME=str(tmp_path / "torch"),
             HOME=str(tmp_path))
  env.pop(inception.WEIGHTS_ENV, None)
  command = [sys.executable, "main.py", "--config", "configs/tiny/ncsnpp_ve_continuous.py",
             "--workdir", str(tmp_path), "--mode", "eval"]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "--mode sample" in result.stderr
  (tmp_path / "eval").mkdir()
  np.savez(tmp_path / "eval" / "samples_0.npz", samples=np.zeros((2, 16, 16, 3), np.uint8))
  pool = np.random.default_rng(12).standard_normal((4, 2048))
  statistics.save_statistics(statistics.stats_path(str(tmp_path), "CIFAR10", 16),
                             dict(mu=pool.mean(0), sigma=np.cov(pool, rowvar=False)))
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert inception.WEIGHTS_FILENAME in result.stderr and "6726825d" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "eval" / "metrics.json").exists()


def test_stats_mode_writes_the_inception_statistics_eval_reads(tmp_path, weight_file, monkeypatch):
  """--mode stats with an Inception weight file at hand also writes <workdir>/stats/<ds>_<size>.npz,
  which --mode eval then finds by itself; without the file it is skipped with a logged reason."""
  import run_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inception, "INPUT_SIZE", SMALL)
  images = np.random.default_rng(3).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  config = _eval_config(inception_weights=weight_file)
  config.data.path = str(tmp_path / "data.npz")
  summary = run_lib.stats(config, str(tmp_path / "work"))
  assert summary["files"]["inception"] == str(tmp_path / "work" / "stats" / "cifar10_16.npz")
  assert statistics.stats_path_for_config(config, str(tmp_path / "work")) == (
      summary["files"]["inception"])
  stats = statistics.load_statistics(summary["files"]["inception"])
  assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
  assert int(stats["num_images"]) == 6
  monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
  monkeypatch.setattr(inception, "default_weight_locations",
                      lambda: (str(tmp_path / "nowhere" / "pt_inception.pth"),))
  config.eval.inception_weights = ""
  assert run_lib.stats(config, str(tmp_path / "other"))["files"]["inception"] is None


# ----------------------------------------------------------------------------------------------
# --mode eval with the digits metric classifier (config.eval.metric = 'digits')


def test_digits_eval_reports_accuracy_against_the_requested_labels(tmp_path):
  """Held-out digits written as two class-conditional rounds: the metric classifier reads them
  as their own labels (its held-out accuracy, 0.99+), and as almost none of them when each round
  records the next class instead; guided-diffusion's arr_0/arr_1 files read the same way; a
  folder without labels gets the other measures and accuracy None."""
  import run_lib  # pylint: disable=g-import-not-at-top
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  from evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
  images, labels = digits_classifier.digits_split(evaluation=True)
  pixels = np.round(images * 255).astype(np.uint8)
  config = digits_ncsnpp.get_config()
  folder = tmp_path / "eval"
  folder.mkdir()

  def write(requested):
    for r, rows in enumerate((slice(0, 180), slice(180, 300))):
      np.savez(folder / f"samples_{r}.npz", samples=pixels[rows], labels=requested[rows])

  write(labels)
  result = run_lib.evaluate(config, str(tmp_path))
  written = json.loads((folder / "metrics.json").read_text())
  assert written["metric"] == "digits" and written["num_samples"] == 300
  assert written["accuracy"] == pytest.approx(result["accuracy"])
  # The classifier's own held-out accuracy, recorded when the weights were made (the images
  # here are rounded to uint8, which may move a borderline digit or two).
  assert result["accuracy"] >= digits_classifier.load_info()["test_accuracy"] - 2 / 300
  assert min(result["per_class_accuracy"]) > 0.9
  assert result["frechet_distance"] < 1.0  # the held-out digits are the reference set
  write((labels + 1) % 10)
  shifted = run_lib.evaluate(config, str(tmp_path))
  assert shifted["accuracy"] < 0.05
  assert shifted["frechet_distance"] == pytest.approx(result["frechet_distance"])

  other_tool = tmp_path / "guided_diffusion.npz"
  np.savez(other_tool, pixels[:50], labels[:50])  # arr_0 images, arr_1 labels
  config.eval.samples_path = str(other_tool)
  assert run_lib.evaluate(config, str(tmp_path))["accuracy"] > 0.9
  np.savez(other_tool, pixels[:50])
  unlabelled = run_lib.evaluate(config, str(tmp_path))
  assert unlabelled["accuracy"] is None and unlabelled["per_class_accuracy"] is None
  assert np.isfinite(unlabelled["frechet_distance"])


@pytest.mark.parametrize("case, match", [
    ("rgb", r"config.eval.metric='digits' measures \(16, 16, 1\)"),
    ("mixed", "mixes sample files with requested labels"),
    ("float_labels", "one integer class per image"),
    ("short_labels", "one integer class per image"),
    ("out_of_range", "labels outside 0..9"),
    ("metric", "config.eval.metric='fid' must be"),
])
def test_digits_eval_bad_input_is_one_clear_error(tmp_path, case, match):
  import run_lib  # pylint: disable=g-import-not-at-top
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  from errors import UserError  # pylint: disable=g-import-not-at-top
  config = digits_ncsnpp.get_config()
  folder = tmp_path / "eval"
  folder.mkdir()
  grey = np.zeros((4, 16, 16, 1), np.uint8)
  labels = np.arange(4)
  if case == "rgb":
    np.savez(folder / "samples_0.npz", samples=np.zeros((4, 32, 32, 3), np.uint8))
  elif case == "mixed":
    np.savez(folder / "samples_0.npz", samples=grey, labels=labels)
    np.savez(folder / "samples_1.npz", samples=grey)
  elif case == "float_labels":
    np.savez(folder / "samples_0.npz", samples=grey, labels=labels.astype(np.float32))
  elif case == "short_labels":
    np.savez(folder / "samples_0.npz", samples=grey, labels=labels[:3])
  elif case == "out_of_range":
    np.savez(folder / "samples_0.npz", samples=grey, labels=labels + 7)
  else:
    np.savez(folder / "samples_0.npz", samples=grey)
    config.eval.metric = "fid"
  with pytest.raises(UserError, match=match):
    run_lib.evaluate(config, str(tmp_path))
  assert not (folder / "metrics.json").exists()
