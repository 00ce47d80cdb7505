"""The noise-conditional WideResNet classifier (models/classifiers.py).

- The released WRN-28-10 config gives the variable tree the architecture implies, built here
  independently (names, shapes, parameter count), so score_sde's params file restores into it.
- A tiny network (one block per group, widths 16/32/64, 8x8x1) runs for real: finite logits that
  depend on the noise level, invariance to x -> a x + b, the input normalisation of `logit_fn`.
- `load_params` round-trips a msgpack file and names the file in every error.
Only `jax.eval_shape` touches the large network; the real forwards are tiny.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import serialization, traverse_util

from configs.ve import cifar10_classifier
from errors import MissingFileError, UserError
from models import classifiers


# ----------------------------------------------------------------------------- helpers

def _tiny_config(num_channels=1, image_size=8):
  config = ml_collections.ConfigDict()
  config.classifier = c = ml_collections.ConfigDict()
  c.name = "wideresnet_noise_conditional"
  c.blocks_per_group = 1
  c.channel_multiplier = 1
  c.num_classes = 3
  c.embedding_size = 16
  c.fourier_scale = 16.
  c.image_mean = (0.5,) * num_channels
  c.image_std = (0.25,) * num_channels
  config.data = d = ml_collections.ConfigDict()
  d.image_size = image_size
  d.num_channels = num_channels
  d.centered = False
  return config


def _expected_tree(in_channels, blocks, multiplier, num_classes, embedding_size):
  """{path: shape} of the noise-conditional WRN, written from the architecture description."""
  temb = 4 * embedding_size
  tree = {
      "GaussianFourierProjection_0/W": (embedding_size,),
      "Dense_0/kernel": (2 * embedding_size, temb), "Dense_0/bias": (temb,),
      "Dense_1/kernel": (temb, temb), "Dense_1/bias": (temb,),
      "init_conv/kernel": (3, 3, in_channels, 16),
  }
  width_in = 16
  for g, width in enumerate((16 * multiplier, 32 * multiplier, 64 * multiplier)):
    for b in range(blocks):
      block = f"WideResnetGroup_{g}/WideResnetBlock_{b}/"
      tree.update({
          block + "init_bn/scale": (width_in,), block + "init_bn/bias": (width_in,),
          block + "conv1/kernel": (3, 3, width_in, width),
          block + "Dense_0/kernel": (temb, width), block + "Dense_0/bias": (width,),
          block + "bn_2/scale": (width,), block + "bn_2/bias": (width,),
          block + "conv2/kernel": (3, 3, width, width),
      })
      width_in = width
  tree.update({
      "pre-pool-bn/scale": (width_in,), "pre-pool-bn/bias": (width_in,),
      "Dense_2/kernel": (width_in, num_classes), "Dense_2/bias": (num_classes,),
  })
  return tree


def _flat_shapes(config):
  return {"/".join(k): v for k, v in classifiers.param_shapes(config).items()}


def _random_params(config, seed=0):
  """Params of the config's classifier drawn with numpy at init-like scales: unit GroupNorm
  scales, fan-in-scaled kernels, Fourier W ~ N(0, fourier_scale²). (Compiling flax's own init
  takes ~15 s on a loaded 2-core CPU, longer than all these tests together.)"""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in classifiers.param_shapes(config).items():
    if key[-1] == "scale":
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif key[-1] == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif key[-1] == "W":
      value = config.classifier.fourier_scale * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    flat[key] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def tiny():
  """(config, classifier, params, jitted apply(params, x, noise_std)) of the tiny network."""
  config = _tiny_config()
  classifier = classifiers.create_classifier(config)
  params = _random_params(config)
  apply = jax.jit(lambda p, x, s: classifier.apply({"params": p}, x, s, train=False))
  return config, classifier, params, apply


def _write(path, params):
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, params)))
  return str(path)


# ----------------------------------------------------------------------------- released config

def test_released_config_fields():
  config = cifar10_classifier.get_config()
  c = config.classifier
  assert c.name == "wideresnet_noise_conditional"
  assert (c.blocks_per_group, c.channel_multiplier, c.num_classes) == (4, 10, 10)
  assert (c.embedding_size, c.fourier_scale) == (128, 16.)
  np.testing.assert_allclose(c.image_mean, (0.49139968, 0.48215841, 0.44653091))
  np.testing.assert_allclose(c.image_std, (0.24703223, 0.24348513, 0.26158784))
  assert config.data.dataset == "CIFAR10" and config.data.image_size == 32
  assert config.data.num_channels == 3 and config.data.centered is False
  assert config.training.sde == "vesde"  # pairs with the VE NCSN++ score model
  assert isinstance(classifiers.create_classifier(config), classifiers.WideResnet)


def test_wrn_28_10_variable_tree_and_parameter_count():
  config = cifar10_classifier.get_config()
  ours = _flat_shapes(config)
  expected = _expected_tree(3, blocks=4, multiplier=10, num_classes=10, embedding_size=128)
  assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
  wrong = {k: (ours[k], v) for k, v in expected.items() if ours[k] != v}
  assert not wrong
  count = sum(int(np.prod(s)) for s in expected.values())
  assert sum(int(np.prod(s)) for s in ours.values()) == count
  # 36.2 M in the WRN-28-10 convolutions, 2.7 M in the noise embedding and per-block Dense layers.
  assert 38.8e6 < count < 39.0e6
  convs = sum(int(np.prod(s)) for k, s in expected.items() if k.endswith("kernel") and len(s) == 4)
  assert 36.1e6 < convs < 36.3e6


def test_registry_names_the_field_and_the_known_classifiers():
  assert classifiers.get_classifier("wideresnet_noise_conditional") is classifiers.WideResnet
  with pytest.raises(UserError, match=r"config\.classifier\.name='nope'.*wideresnet_noise_cond"):
    classifiers.get_classifier("nope")
  with pytest.raises(ValueError, match="already registered"):
    classifiers.register_classifier("wideresnet_noise_conditional")(classifiers.WideResnet)


# ----------------------------------------------------------------------------- tiny forwards

def test_tiny_tree_matches_the_description(tiny):
  config, _, params, _ = tiny
  assert isinstance(jax.eval_shape(lambda: classifiers.init_params(config, jax.random.PRNGKey(0))),
                    dict)
  expected = _expected_tree(1, blocks=1, multiplier=1, num_classes=3, embedding_size=16)
  flat = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
  assert flat == expected == _flat_shapes(config)


def test_tiny_forward_is_finite_and_noise_conditional(tiny):
  _, _, params, apply = tiny
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  low = apply(params, x, jnp.array([0.1, 0.1]))
  high = apply(params, x, jnp.array([10., 10.]))
  assert low.shape == (2, 3) and low.dtype == jnp.float32
  assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))
  assert np.max(np.abs(low - high)) > 1e-3
  assert np.max(np.abs(low[0] - low[1])) > 1e-4  # the images differ, so do their logits


def test_logits_are_invariant_to_affine_maps_of_each_image(tiny):
  _, _, params, apply = tiny
  x = 0.5 + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))
  noise_std = jnp.array([0.5, 3.])
  base = np.asarray(apply(params, x, noise_std))
  for a, b in ((2.5, -0.7), (0.6, 4.)):
    moved = np.asarray(apply(params, a * x + b, noise_std))
    np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-4 * np.max(np.abs(base)))


class _Echo:
  """Stands in for a classifier: returns what `logit_fn` feeds it."""

  def apply(self, variables, x, noise_std, train):
    assert variables == {"params": "p"} and train is False
    return x, noise_std


def test_logit_fn_normalises_each_channel():
  config = _tiny_config(num_channels=3)
  config.classifier.image_mean = (0.1, 0.2, 0.3)
  config.classifier.image_std = (0.5, 0.25, 2.)
  x = np.random.default_rng(3).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  noise_std = np.array([0.2, 1.], np.float32)
  fed, fed_std = classifiers.logit_fn(config, _Echo(), "p")(x, noise_std)
  expected = (x - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.])
  np.testing.assert_allclose(fed, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(fed_std, noise_std)
  config.classifier.image_mean = (0.5,)
  with pytest.raises(UserError, match="image_mean"):
    classifiers.logit_fn(config, _Echo(), "p")
  config.classifier.image_mean = (0.1, 0.2, 0.3)
  config.classifier.image_std = (0.5, 0., 1.)
  with pytest.raises(UserError, match="image_std"):
    classifiers.logit_fn(config, _Echo(), "p")


# ----------------------------------------------------------------------------- load_params

def test_load_params_round_trips(tiny, tmp_path):
  config, _, params, _ = tiny
  path = _write(tmp_path / "classifier.msgpack", params)
  loaded = classifiers.load_params(config, path)
  flat, ref = traverse_util.flatten_dict(loaded), traverse_util.flatten_dict(params)
  assert set(flat) == set(ref)
  for key, value in flat.items():
    assert isinstance(value, jax.Array)
    np.testing.assert_array_equal(value, ref[key])


def test_load_params_accepts_flax_0_3_group_norm_shapes(tiny, tmp_path):
  config, _, params, _ = tiny
  flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params))
  legacy = {k: (v.reshape((1, 1, 1, -1)) if k[-1] in ("scale", "bias") and len(k) >= 2
                and k[-2] in ("init_bn", "bn_2", "pre-pool-bn") else v) for k, v in flat.items()}
  assert sum(v.ndim == 4 and k[-1] == "scale" for k, v in legacy.items()) == 7
  path = _write(tmp_path / "legacy.msgpack", traverse_util.unflatten_dict(legacy))
  loaded = traverse_util.flatten_dict(classifiers.load_params(config, path))
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, flat[key])


def _edited(params, edit):
  flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params))
  edit(flat)
  return traverse_util.unflatten_dict(flat)


def test_load_params_names_the_file_and_the_first_misfit(tiny, tmp_path):
  config, _, params, _ = tiny
  key = ("WideResnetGroup_1", "WideResnetBlock_0", "conv1", "kernel")

  def reshape(flat):
    flat[key] = np.zeros((3, 3, 16, 33), np.float32)

  path = _write(tmp_path / "wrong_shape.msgpack", _edited(params, reshape))
  with pytest.raises(UserError, match=r"wrong_shape\.msgpack.*WideResnetGroup_1/WideResnetBlock_0/"
                     r"conv1/kernel: file \(3, 3, 16, 33\), model \(3, 3, 16, 32\)"):
    classifiers.load_params(config, path)

  path = _write(tmp_path / "missing_key.msgpack",
                _edited(params, lambda flat: flat.pop(("Dense_2", "bias"))))
  with pytest.raises(UserError, match=r"missing_key\.msgpack.*Dense_2/bias: missing"):
    classifiers.load_params(config, path)


def test_load_params_refuses_truncated_and_missing_files(tiny, tmp_path):
  config, _, params, _ = tiny
  path = _write(tmp_path / "full.msgpack", params)
  with open(path, "rb") as f:
    raw = f.read()
  truncated = tmp_path / "truncated.msgpack"
  truncated.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(UserError, match=r"truncated\.msgpack"):
    classifiers.load_params(config, str(truncated))
  missing = os.path.join(str(tmp_path), "absent.msgpack")
  with pytest.raises(MissingFileError, match=r"absent\.msgpack"):
    classifiers.load_params(config, missing)
