"""NCSN++/DDPM++ ('ncsnpp') and DDPM ('ddpm') networks against the released score_sde ones.

1. Variable trees (names, shapes, parameter count) of every released ncsnpp/ddpm config, by
   `jax.eval_shape` only (no full-size forward).
2. Golden forward passes (released architecture, perturbed weights) to relative error < 1e-4.
3. Architecture checks independent of the reference files: tiny variants exercising every option
   branch, and the FIR resampling ops against a direct numpy upfirdn2d.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from compiled_models import golden_forward
from models import layers
from models import layerspp
from models import up_or_down_sampling as uds
from models import utils as model_utils
from reference_cases import GOLDEN_CASES, PARAM_TREE_NAMES, golden_case, param_tree, relative_error

OUR_TREES = tuple(n for n in PARAM_TREE_NAMES
                  if param_tree(n)["config"].model.name in ("ncsnpp", "ddpm"))


def _flat_shapes(variables):
  return {"/".join(path): tuple(leaf.shape)
          for path, leaf in traverse_util.flatten_dict(variables).items()}


# ---------------------------------------------------------------------------------------------
# 1. Released variable trees.
# ---------------------------------------------------------------------------------------------

def test_all_released_ncsnpp_ddpm_configs_are_covered():
  assert len(OUR_TREES) == 28


@pytest.mark.parametrize("name", OUR_TREES)
def test_variable_tree_matches_released(name):
  ref = param_tree(name)
  config = ref["config"]
  size, channels = config.data.image_size, config.data.num_channels
  label_dtype = jnp.float32 if config.training.continuous else jnp.int32
  model = model_utils.create_model(config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, channels), jnp.float32),
      jnp.ones((1,), label_dtype)))
  flat = _flat_shapes(shapes)
  missing = sorted(set(ref["shapes"]) - set(flat))
  extra = sorted(set(flat) - set(ref["shapes"]))
  assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
  wrong = {k: (flat[k], ref["shapes"][k]) for k in flat if flat[k] != ref["shapes"][k]}
  assert not wrong, wrong
  assert sum(int(np.prod(s)) for s in flat.values()) == ref["num_params"]


# ---------------------------------------------------------------------------------------------
# 2. Golden forward passes.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_forward(name):
  case = golden_case(name)
  y = golden_forward(name)
  assert y.shape == case["y"].shape
  assert relative_error(y, case["y"]) < 1e-4


# ---------------------------------------------------------------------------------------------
# 3a. FIR up/down-sampling against a direct numpy upfirdn2d.
# ---------------------------------------------------------------------------------------------

def _np_kernel(taps, gain):
  k = np.outer(taps, taps).astype(np.float64)
  return k / k.sum() * gain


def _np_upfirdn2d(x, k, up, down, pad0, pad1):
  """Zero-insert by `up`, pad, true-convolve each channel with k (valid part), keep every `down`."""
  b, h, w, c = x.shape
  u = np.zeros((b, h * up, w * up, c))
  u[:, ::up, ::up, :] = x
  u = np.pad(u, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
  kk = k.shape[0]
  ho, wo = u.shape[1] - kk + 1, u.shape[2] - kk + 1
  out = np.zeros((b, ho, wo, c))
  flipped = k[::-1, ::-1]
  for i in range(kk):
    for j in range(kk):
      out += flipped[i, j] * u[:, i:i + ho, j:j + wo, :]
  return out[:, ::down, ::down, :]


def _np_correlate_valid(x, w, stride):
  kk = w.shape[0]
  ho = (x.shape[1] - kk) // stride + 1
  wo = (x.shape[2] - kk) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for i in range(kk):
    for j in range(kk):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out += np.einsum("bhwc,co->bhwo", patch, w[i, j])
  return out


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 4, 1)])
def test_fir_resampling_matches_numpy_upfirdn2d(taps):
  rng = np.random.RandomState(0)
  x = rng.randn(2, 6, 6, 3).astype(np.float32)
  # upsample_2d: up 2, gain 4, p = K - 2 -> pads ((p + 1) // 2 + 1, p // 2) = (2, 1).
  expected = _np_upfirdn2d(x, _np_kernel(taps, 4.0), up=2, down=1, pad0=2, pad1=1)
  actual = np.asarray(uds.upsample_2d(jnp.asarray(x), taps, factor=2))
  assert actual.shape == (2, 12, 12, 3)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  # downsample_2d: down 2, gain 1, pads ((p + 1) // 2, p // 2) = (1, 1).
  expected = _np_upfirdn2d(x, _np_kernel(taps, 1.0), up=1, down=2, pad0=1, pad1=1)
  actual = np.asarray(uds.downsample_2d(jnp.asarray(x), taps, factor=2))
  assert actual.shape == (2, 3, 3, 3)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  # The general op with up and down at once (cropping-free pads).
  expected = _np_upfirdn2d(x, _np_kernel(taps, 2.0), up=2, down=2, pad0=2, pad1=1)
  actual = np.asarray(uds.upfirdn2d(jnp.asarray(x), _np_kernel(taps, 2.0).astype(np.float32),
                                    up=2, down=2, pad0=2, pad1=1))
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_fir_filter_paths_agree(stride):
  """The CPU's strided-slice FIR and the accelerators' depthwise convolution compute one thing."""
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 9, 9, 5).astype(np.float32))
  taps = rng.rand(4, 4).astype(np.float32)
  by_taps = np.asarray(uds._filter_by_taps(x, taps, stride))  # pylint: disable=protected-access
  depthwise = np.asarray(uds._filter_depthwise(x, taps, stride))  # pylint: disable=protected-access
  assert by_taps.shape == depthwise.shape == (2, (9 - 4) // stride + 1, (9 - 4) // stride + 1, 5)
  np.testing.assert_allclose(by_taps, depthwise, rtol=1e-5, atol=1e-5)


def test_fused_resampling_convs_match_numpy():
  rng = np.random.RandomState(1)
  x = rng.randn(2, 5, 5, 3).astype(np.float32)
  w = rng.randn(3, 3, 3, 4).astype(np.float32)
  taps = (1, 3, 3, 1)
  # upsample_conv_2d = TF conv2d_transpose(stride 2, VALID) with the flipped kernel, i.e. every
  # input pixel p scatters x[p]·w[K-1-a] to output 2p + a; then FIR with gain 4 and pads (1, 1).
  t = np.zeros((2, 2 * 4 + 3, 2 * 4 + 3, 4))
  for a in range(3):
    for b in range(3):
      t[:, a:a + 9:2, b:b + 9:2, :] += np.einsum("bhwc,co->bhwo", x, w[2 - a, 2 - b])
  expected = _np_upfirdn2d(t, _np_kernel(taps, 4.0), up=1, down=1, pad0=1, pad1=1)
  actual = np.asarray(uds.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w), k=taps))
  assert actual.shape == (2, 10, 10, 4)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
  # Away from the border it equals upsample_2d followed by a SAME 3x3 correlation.
  unfused = jax.lax.conv_general_dilated(uds.upsample_2d(jnp.asarray(x), taps), jnp.asarray(w),
                                         (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(actual[:, 2:-2, 2:-2], np.asarray(unfused)[:, 2:-2, 2:-2],
                             rtol=1e-4, atol=1e-4)
  # conv_downsample_2d = FIR (gain 1, pads (p+1)//2, p//2 with p = K - 2 + 2 = 4) then a
  # stride-2 VALID correlation.
  x8 = rng.randn(2, 8, 8, 3).astype(np.float32)
  filtered = _np_upfirdn2d(x8, _np_kernel(taps, 1.0), up=1, down=1, pad0=2, pad1=2)
  expected = _np_correlate_valid(filtered, w.astype(np.float64), stride=2)
  actual = np.asarray(uds.conv_downsample_2d(jnp.asarray(x8), jnp.asarray(w), k=taps))
  assert actual.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_fir_conv2d_module_params_and_shapes():
  x = jnp.ones((1, 8, 8, 3))
  for kwargs, out_size in ((dict(up=True), 16), (dict(down=True), 4), ({}, 8)):
    conv = uds.Conv2d(5, kernel=3, kernel_init=layers.default_init(), **kwargs)
    variables = conv.init(jax.random.PRNGKey(0), x)
    assert _flat_shapes(variables) == {"params/weight": (3, 3, 3, 5), "params/bias": (5,)}
    assert conv.apply(variables, x).shape == (1, out_size, out_size, 5)


def test_timestep_embedding():
  emb = layers.get_timestep_embedding(jnp.array([0, 3]), 7)
  assert emb.shape == (2, 7)
  half = 3
  freqs = np.exp(-np.log(10000) / (half - 1) * np.arange(half))
  expected = np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs), [0.0]])
  np.testing.assert_allclose(np.asarray(emb[1]), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(emb[0]), [0, 0, 0, 1, 1, 1, 0], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 3b. Tiny variants covering every option branch.
# ---------------------------------------------------------------------------------------------

def _tiny_config(name="ncsnpp", continuous=True, centered=False, **model_overrides):
  """A config carrying only score_sde's own fields, shrunk to an 8x8 image."""
  model = dict(
      name=name, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
      resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1],
      skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="none",
      progressive_combine="sum", attention_type="ddpm", embedding_type="fourier",
      fourier_scale=16, init_scale=0.3, conv_size=3, nonlinearity="swish",
      normalization="GroupNorm", scale_by_sigma=False, sigma_min=0.01, sigma_max=50.0,
      num_scales=10, beta_min=0.1, beta_max=20.0, ema_rate=0.999, num_classes=10)
  model.update(model_overrides)
  return ml_collections.ConfigDict(dict(
      data=dict(image_size=8, num_channels=3, centered=centered, dataset="CIFAR10"),
      training=dict(continuous=continuous, sde="vesde"),
      model=model))


# name -> (config kwargs, label kind, path fragments that must appear, fragments that must not)
VARIANTS = {
    # DDPM++-style: ddpm resblocks, plain resampling, residual pyramids, unconditional,
    # positional embedding with continuous VP labels, no skip rescale, centred data.
    "ddpm_block_residual_pyramids": (
        dict(resblock_type="ddpm", fir=False, progressive="residual",
             progressive_input="residual", conditional=False, embedding_type="positional",
             skip_rescale=False, centered=True, nonlinearity="relu"),
        "time", ["ResnetBlockDDPMpp_0/", "Upsample_0/Conv_0/", "Downsample_0/Conv_0/"],
        ["Dense_", "Conv2d", "Combine", "GaussianFourierProjection"]),
    # NCSN++ with FIR: residual output pyramid (fused FIR up-conv), input_skip with 'cat'.
    "biggan_fir_residual_output_cat_input": (
        dict(progressive="residual", progressive_input="input_skip", progressive_combine="cat",
             scale_by_sigma=True),
        "sigma", ["ResnetBlockBigGANpp_0/", "Upsample_0/Conv2d_0/weight", "Combine_0/Conv_0/",
                  "GaussianFourierProjection_0/W", "Dense_1/"], ["Downsample_"]),
    # BigGAN blocks without FIR (nearest / average pooling), output_skip, residual input
    # pyramid with a plain stride-2 conv, discrete positional labels divided by their sigma.
    "biggan_nofir_output_skip": (
        dict(fir=False, progressive="output_skip", progressive_input="residual",
             embedding_type="positional", scale_by_sigma=True, continuous=False,
             nonlinearity="lrelu"),
        "index", ["Downsample_0/Conv_0/", "ResnetBlockBigGANpp_1/Conv_2/"],
        ["Conv2d", "Combine", "Upsample_"]),
    # ddpm resblocks with FIR resampling and no resampling conv; output_skip + input_skip 'cat'.
    "ddpm_block_fir_noconv_skips": (
        dict(resblock_type="ddpm", resamp_with_conv=False, progressive="output_skip",
             progressive_input="input_skip", progressive_combine="cat", nonlinearity="elu"),
        "sigma", ["ResnetBlockDDPMpp_", "Combine_0/Conv_0/"], ["Upsample_", "Downsample_"]),
    # ddpm resblocks with fused FIR convs on the main path and in both pyramids; zero init_scale.
    "ddpm_block_fir_conv_residual": (
        dict(resblock_type="ddpm", progressive="residual", progressive_input="residual",
             init_scale=0.0, scale_by_sigma=True),
        "sigma", ["Upsample_0/Conv2d_0/", "Upsample_1/Conv2d_0/", "Downsample_1/Conv2d_0/"],
        ["Combine"]),
    # The plainest DDPM++: no pyramids, average pooling / nearest resampling.
    "ddpm_block_plain": (
        dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, embedding_type="positional",
             continuous=False),
        "index", ["ResnetBlockDDPMpp_"], ["Upsample_", "Downsample_", "Combine"]),
    # DDPM: unconditional, average pooling / nearest resampling, divided by discrete sigma.
    "ddpm_unconditional_noconv": (
        dict(name="ddpm", nf=32, conditional=False, resamp_with_conv=False, scale_by_sigma=True,
             continuous=False, nonlinearity="relu"),
        "index", ["ResnetBlockDDPM_0/", "AttnBlock_0/NIN_3/W"],
        ["Dense_0", "Upsample_", "Downsample_"]),
}


def _labels(kind):
  if kind == "sigma":
    return jnp.array([0.3, 20.0], jnp.float32)
  if kind == "time":
    return jnp.array([3.5, 900.0], jnp.float32)
  return jnp.array([0, 7], jnp.int32)


def _variant_config(variant):
  kwargs = dict(VARIANTS[variant][0])
  top = {k: kwargs.pop(k) for k in ("name", "continuous", "centered") if k in kwargs}
  return _tiny_config(**top, **kwargs)


def _random_variables(model, x, labels, seed=0):
  """Random values (no compiled init) for every variable of `model`: weights N(0, 0.1²), norm
  scales 1 + N(0, 0.1²), so that even the branches released models zero-initialise matter."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels))
  rng = np.random.RandomState(seed)
  flat = {path: (float(path[-1] == "scale") + 0.1 * rng.standard_normal(s.shape))
          .astype(np.float32)
          for path, s in traverse_util.flatten_dict(shapes).items()}
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_variant_forward(variant):
  _, label_kind, present, absent = VARIANTS[variant]
  config = _variant_config(variant)
  model = model_utils.create_model(config)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  labels = _labels(label_kind)
  variables = _random_variables(model, x, labels)

  paths = list(_flat_shapes(variables))
  for fragment in present:
    assert any(fragment in p for p in paths), (fragment, paths)
  for fragment in absent:
    assert not any(fragment in p for p in paths), (fragment, paths)

  scale_by_sigma = config.model.scale_by_sigma
  if scale_by_sigma:
    unscaled = ml_collections.ConfigDict(config.to_dict())
    unscaled.model.scale_by_sigma = False
    unscaled_model = model_utils.create_model(unscaled)

  @jax.jit
  def run(variables, x, labels):
    y = model.apply(variables, x, labels, train=False)
    y_unscaled = unscaled_model.apply(variables, x, labels, train=False) if scale_by_sigma else y
    return y, y_unscaled

  y, y_unscaled = jax.device_get(run(variables, x, labels))
  assert y.shape == (2, 8, 8, 3)
  assert np.all(np.isfinite(y))
  assert np.std(y) > 1e-3
  if scale_by_sigma:
    if label_kind == "sigma":
      sigmas = np.asarray(labels)
    else:
      sigmas = model_utils.get_sigmas(config)[np.asarray(labels)]
    np.testing.assert_allclose(y * sigmas[:, None, None, None], y_unscaled, rtol=1e-5,
                               atol=1e-6 * np.abs(y_unscaled).max())
    assert not np.allclose(y, y_unscaled)


def test_init_and_dropout():
  """A real (compiled) init gives the released initialisation; dropout acts only in training."""
  config = _variant_config("biggan_fir_residual_output_cat_input")
  config.model.init_scale = 0.3
  config.model.dropout = 0.5
  model = model_utils.create_model(config)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  labels = _labels("sigma")
  key = jax.random.key(0, impl="rbg")  # compiles much faster than threefry

  @jax.jit
  def run(x, labels, key):
    init_key, dropout_key = jax.random.split(key)
    variables = model.init(init_key, x, labels)
    return (variables, model.apply(variables, x, labels),
            model.apply(variables, x, labels, train=True, rngs={"dropout": dropout_key}))

  variables, y, y_train = jax.device_get(run(x, labels, key))
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels))
  assert _flat_shapes(variables) == _flat_shapes(expected)
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()}
  assert all(np.all(np.isfinite(v)) for v in flat.values())
  for path, value in flat.items():
    if path.endswith("/bias") or path.endswith("/b"):
      assert np.all(value == 0), path
  def uniform_bound(scale, fan_in, fan_out):
    # variance_scaling(scale, 'fan_avg', 'uniform') draws from U(-b, b), b = sqrt(3·scale/fan_avg).
    return np.sqrt(3 * scale / ((fan_in + fan_out) / 2))

  def check_uniform(path, scale, fan_in, fan_out):
    bound, value = uniform_bound(scale, fan_in, fan_out), np.abs(flat[path]).max()
    assert 0.5 * bound < value <= bound * (1 + 1e-6), (path, value, bound)

  check_uniform("params/Conv_0/kernel", 1.0, 9 * 3, 9 * 8)  # default DDPM init
  check_uniform("params/AttnBlockpp_0/NIN_0/W", 0.1, 16, 16)  # NIN default scale 0.1
  # `init_scale` is the variance scale of the output layer of every residual branch.
  check_uniform("params/AttnBlockpp_0/NIN_3/W", 0.3, 16, 16)
  check_uniform("params/ResnetBlockBigGANpp_0/Conv_1/kernel", 0.3, 9 * 8, 9 * 8)
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(y_train))
  assert not np.allclose(y, y_train), "dropout must act when train=True"


def test_default_init_zero_scale_means_1e_10():
  w = np.asarray(layers.default_init(0.0)(jax.random.PRNGKey(0), (16, 16)))
  bound = np.sqrt(3 * 1e-10 / 16)
  assert 0.5 * bound < np.abs(w).max() <= bound * (1 + 1e-6)


def test_fourier_projection_is_not_trained():
  proj = layerspp.GaussianFourierProjection(embedding_size=4, scale=16.0)
  x = jnp.array([0.5, -1.0])
  variables = proj.init(jax.random.PRNGKey(0), x)
  w = np.asarray(variables["params"]["W"])
  assert w.shape == (4,)
  out = np.asarray(proj.apply(variables, x))
  expected = np.concatenate([np.sin(2 * np.pi * np.outer(x, w)), np.cos(2 * np.pi * np.outer(x, w))],
                            axis=-1)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  grads = jax.grad(lambda v: jnp.sum(proj.apply(v, x)))(variables)
  assert np.all(np.asarray(grads["params"]["W"]) == 0)


def test_centering_follows_data_centered():
  """With data.centered False the network sees 2x - 1: same output as centred input 2x - 1."""
  config = _tiny_config(resblock_type="ddpm", fir=False, resamp_with_conv=False,
                        embedding_type="positional", continuous=False, centered=False)
  centred = ml_collections.ConfigDict(config.to_dict())
  centred.data.centered = True
  model, centred_model = model_utils.create_model(config), model_utils.create_model(centred)
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 8, 8, 3))
  labels = jnp.array([1, 5], jnp.int32)

  variables = _random_variables(model, x, labels)

  @jax.jit
  def run(variables, x):
    return model.apply(variables, x, labels), centred_model.apply(variables, 2 * x - 1, labels)

  y, y_centred = run(variables, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_centred), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Clear errors for unsupported option values.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("progressive", "foo"), ("progressive_input", "foo"), ("progressive_combine", "foo"),
    ("resblock_type", "foo"), ("embedding_type", "foo"), ("nonlinearity", "foo"),
])
def test_unsupported_ncsnpp_option_raises(field, value):
  config = _tiny_config(**{field: value})
  model = model_utils.create_model(config)
  with pytest.raises(ValueError, match=rf"config\.model\.{field}='foo'"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                      jnp.ones((1,))))


def test_fourier_embedding_needs_continuous_training():
  model = model_utils.create_model(_tiny_config(continuous=False))
  with pytest.raises(ValueError, match=r"config\.training\.continuous"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                      jnp.ones((1,))))


@pytest.mark.parametrize("field,value", [("normalization", "InstanceNorm"), ("nonlinearity", "foo")])
def test_unsupported_ddpm_option_raises(field, value):
  model = model_utils.create_model(_tiny_config(name="ddpm", nf=32, **{field: value}))
  with pytest.raises(ValueError, match=rf"config\.model\.{field}="):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                      jnp.ones((1,), jnp.int32)))
