"""NCSNv2 / NCSN v1 networks: released variable trees, numerics against an independent numpy model.

- The three released NCSNv2 configs give exactly the released variable trees and parameter counts.
- ncsnv2_256 (no released config) gives the tree the architecture implies, derived here from the
  released 128 px tree; NCSN v1 gives the ncsnv2_64 convolutions plus conditional norms.
- Forward passes of every variant at small sizes agree with a float64 numpy re-implementation
  written from the papers' formulas (conv, InstanceNorm++, ELU, 5x5 pooling, half-pixel bilinear
  resize, 2x2 mean pool), which pins down the wiring of every named parameter.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import reference_cases
from models import ncsnv2  # noqa: F401  (registers the models)
from models import normalization, refinenet_layers, utils

NCSNV2_TREES = ("ve__ncsnv2__cifar10", "ve__ncsnv2__celeba", "ve__ncsnv2__bedroom")


# ----------------------------------------------------------------------------- helpers

def _create(config):
  """utils.create_model, or the registry directly while the sibling model families are missing."""
  try:
    return utils.create_model(config)
  except ModuleNotFoundError as e:  # models.ddpm / models.ncsnpp not written yet
    if e.name not in ("models.ddpm", "models.ncsnpp"):
      raise
    return utils._MODELS[config.model.name](config=config)  # pylint: disable=protected-access


def _base_config(name="ncsnv2_64", nf=8, image_size=32, **model):
  cfg = reference_cases.param_tree("ve__ncsnv2__cifar10")["config"].copy_and_resolve_references()
  cfg.model.name = name
  cfg.model.nf = nf
  cfg.data.image_size = image_size
  for k, v in model.items():
    cfg.model[k] = v
  return cfg


def _ncsn_config(**kw):
  cfg = _base_config("ncsn", **kw)
  cfg.model.num_scales = 10
  cfg.model.sigma_max = 1
  return cfg


def _init_shapes(model, x, labels):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))


def _flat_shapes(variables):
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(variables).items()}


def _random_variables(model, x, labels, seed=0):
  """Random (not init) float32 variables of the model's tree, so every parameter matters."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(_init_shapes(model, x, labels)).items():
    shape = leaf.shape
    if path[-1] == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif path[-1] in ("alpha", "gamma"):
      value = 1. + 0.1 * rng.standard_normal(shape)
    elif path[-1] == "embedding":
      c = shape[1] // 3
      value = np.concatenate([1. + 0.1 * rng.standard_normal((shape[0], 2 * c)),
                              0.1 * rng.standard_normal((shape[0], c))], axis=-1)
    else:
      value = 0.1 * rng.standard_normal(shape)
    flat[path] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat)


def _inputs(batch, size, seed=1, channels=3):
  x = np.random.default_rng(seed).uniform(size=(batch, size, size, channels)).astype(np.float32)
  return jnp.asarray(x)


# ----------------------------------------------------------------------------- numpy reference

def np_elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0.)))


def np_conv(x, p, dilation=1):
  """NHWC convolution, stride 1, zero padding keeping H and W."""
  k = np.asarray(p["kernel"], np.float64)
  pad = (k.shape[0] // 2) * dilation
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (k.shape[-1],))
  for i in range(k.shape[0]):
    for j in range(k.shape[1]):
      out += xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w] @ k[i, j]
  if "bias" in p:
    out += np.asarray(p["bias"], np.float64)
  return out


def np_mean_pool(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def np_pool5(x, kind):
  """5x5 window, stride 1, output size kept: max with -inf padding or average over 25 (zero pad)."""
  fill = -np.inf if kind == "max" else 0.
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=fill)
  h, w = x.shape[1:3]
  windows = [xp[:, i:i + h, j:j + w] for i in range(5) for j in range(5)]
  return np.max(windows, axis=0) if kind == "max" else np.sum(windows, axis=0) / 25.


def np_resize(x, shape, method):
  """Half-pixel-centre resize (bilinear with clamped edges, or nearest) along H and W."""
  for axis, n_out in ((1, shape[0]), (2, shape[1])):
    n_in = x.shape[axis]
    centre = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    if method == "nearest_neighbor":
      x = np.take(x, np.floor(centre + 0.5).astype(int).clip(0, n_in - 1), axis=axis)
      continue
    src = np.clip(centre, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    wshape = [1] * x.ndim
    wshape[axis] = n_out
    frac = (src - i0).reshape(wshape)
    x = np.take(x, i0, axis=axis) * (1 - frac) + np.take(x, i1, axis=axis) * frac
  return x


def np_instance_norm_plus(x, gamma, alpha, beta):
  """InstanceNorm++ formula; gamma/alpha/beta broadcast as (C,) or (B, C)."""
  mu = x.mean(axis=(1, 2))
  h = (x - mu[:, None, None]) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
  mu_t = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, keepdims=True) + 1e-5)
  expand = lambda a: np.asarray(a, np.float64).reshape(-1, 1, 1, x.shape[-1])
  return expand(gamma) * (h + expand(alpha) * mu_t[:, None, None]) + expand(beta)


class NumpyRefineNet:
  """Float64 numpy NCSNv2 / NCSN v1 reading the flax variables by their released names."""

  # Backbone per variant, written from the released architecture: (resample, dilation) per stage.
  BACKBONES = {
      "ncsnv2_64": ((None, 1), ("down", 1), ("down", 2), ("down", 4)),
      "ncsn": ((None, 1), ("down", 1), ("down", 2), ("down", 4)),
      "ncsnv2_128": ((None, 1), ("down", 1), ("down", 1), ("down", 2), ("down", 4)),
      "ncsnv2_256": ((None, 1), ("down", 1), ("down", 1), ("down", 1), ("down", 2), ("down", 4)),
  }

  def __init__(self, config, params):
    self.cfg = config
    self.params = params
    self.cond = config.model.name == "ncsn"
    prefix = "Cond" if self.cond else ""
    self.names = dict(res="ConditionalResidualBlock" if self.cond else "ResidualBlock",
                      refine=prefix + "RefineBlock", rcu=prefix + "RCUBlock",
                      msf=prefix + "MSFBlock", crp=prefix + "CRPBlock")

  def norm(self, p, k, x):
    if self.cond:
      rows = np.asarray(p[f"ConditionalInstanceNorm2dPlus_{k}"]["Embed_0"]["embedding"])[self.y]
      gamma, alpha, beta = np.split(rows, 3, axis=-1)
    else:
      q = p[f"InstanceNorm2dPlus_{k}"]
      gamma, alpha, beta = q["gamma"], q["alpha"], q["beta"]
    return np_instance_norm_plus(x, gamma, alpha, beta)

  def residual(self, p, x, resample, dilation):
    h = np_elu(self.norm(p, 0, x))
    if resample == "down":
      h = np_elu(self.norm(p, 1, np_conv(h, p["Conv_0"], dilation)))
      if dilation > 1:
        return np_conv(h, p["Conv_1"], dilation) + np_conv(x, p["Conv_2"], dilation)
      return (np_mean_pool(np_conv(h, p["ConvMeanPool_0"]["Conv_0"]))
              + np_mean_pool(np_conv(x, p["ConvMeanPool_1"]["Conv_0"])))
    h = np_elu(self.norm(p, 1, np_conv(h, p["Conv_0"], dilation)))
    return np_conv(h, p["Conv_1"], dilation) + x

  def rcu(self, p, x, n_blocks):
    k = 0
    for _ in range(n_blocks):
      residual = x
      for _ in range(2):
        x = self.norm(p, k, x) if self.cond else x
        x = np_conv(np_elu(x), p[f"Conv_{k}"])
        k += 1
      x = x + residual
    return x

  def crp(self, p, x):
    x = np_elu(x)
    path = x
    for k in range(2):
      path = np_pool5(self.norm(p, k, path), "avg") if self.cond else np_pool5(path, "max")
      path = np_conv(path, p[f"Conv_{k}"])
      x = path + x
    return x

  def msf(self, p, xs, shape):
    total = 0.
    for i, x in enumerate(xs):
      h = self.norm(p, i, x) if self.cond else x
      total = total + np_resize(np_conv(h, p[f"Conv_{i}"]), shape, self.cfg.model.interpolation)
    return total

  def refine(self, p, xs, shape, start, end):
    n = self.names
    hs = [self.rcu(p[f"{n['rcu']}_{i}"], x, 2) for i, x in enumerate(xs)]
    h = hs[0] if start else self.msf(p[f"{n['msf']}_0"], hs, shape)
    h = self.crp(p[f"{n['crp']}_0"], h)
    return self.rcu(p[f"{n['rcu']}_{len(xs)}"], h, 3 if end else 1)

  def __call__(self, x, labels):
    p, n = self.params, self.names
    self.y = np.asarray(labels)
    x = np.asarray(x, np.float64)
    h = x if self.cfg.data.centered else 2 * x - 1
    h = np_conv(h, p["Conv_0"])
    layers, k = [], 0
    for resample, dilation in self.BACKBONES[self.cfg.model.name]:
      h = self.residual(p[f"{n['res']}_{k}"], h, resample, dilation)
      h = self.residual(p[f"{n['res']}_{k + 1}"], h, None, dilation)
      layers.append(h)
      k += 2
    ref = None
    for i, layer in enumerate(layers[::-1]):
      xs = [layer] if ref is None else [layer, ref]
      ref = self.refine(p[f"{n['refine']}_{i}"], xs, layer.shape[1:3], i == 0, i == len(layers) - 1)
    h = np_conv(np_elu(self.norm(p, 0, ref)), p["Conv_1"])
    sigmas = utils.get_sigmas(self.cfg)
    return h / sigmas[self.y][:, None, None, None]


# ----------------------------------------------------------------------------- variable trees

@pytest.mark.parametrize("name", NCSNV2_TREES)
def test_released_variable_tree_and_parameter_count(name):
  ref = reference_cases.param_tree(name)
  cfg = ref["config"]
  size, channels = cfg.data.image_size, cfg.data.num_channels
  model = _create(cfg)
  shapes = _flat_shapes(_init_shapes(model, jnp.zeros((1, size, size, channels)),
                                     jnp.zeros((1,), jnp.int32)))
  assert sorted(shapes) == sorted(ref["shapes"])
  assert shapes == ref["shapes"]
  n_params = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("params/"))
  assert n_params == ref["num_params"]


def test_ncsnv2_256_tree_extends_the_released_128_tree():
  """ncsnv2_256 = ncsnv2_128 plus one more 2nf stage (2 residual blocks, 1 refine block)."""
  bedroom = reference_cases.param_tree("ve__ncsnv2__bedroom")
  cfg = bedroom["config"].copy_and_resolve_references()
  cfg.model.name, cfg.data.image_size = "ncsnv2_256", 256
  shapes = _flat_shapes(_init_shapes(_create(cfg), jnp.zeros((1, 256, 256, 3)),
                                     jnp.zeros((1,), jnp.int32)))
  expected = {}
  for path, shape in bedroom["shapes"].items():
    # 128 px residual blocks 0-5 keep their index, 6-9 shift by 2; blocks 4 and 5 (the 2nf
    # stage with ConvMeanPool) are duplicated as 6 and 7 for the extra stage.
    m = re.match(r"params/(ResidualBlock|RefineBlock)_(\d+)/(.*)", path)
    if not m:
      expected[path] = shape
      continue
    block, k, rest = m.group(1), int(m.group(2)), m.group(3)
    if block == "ResidualBlock":
      targets = [k] if k < 4 else ([k, k + 2] if k < 6 else [k + 2])
    else:  # refine blocks 0, 1 keep; 2 (2nf, inputs 2nf) is duplicated; 3, 4 shift by 1
      targets = [k] if k < 2 else ([k, k + 1] if k == 2 else [k + 1])
    for t in targets:
      expected[f"params/{block}_{t}/{rest}"] = shape
  assert shapes == expected
  assert sum(1 for k in shapes if k.endswith("ConvMeanPool_1/Conv_0/kernel")) == 3


def test_ncsn_v1_tree_is_ncsnv2_64_convs_plus_conditional_norms():
  cfg = _ncsn_config(nf=128, image_size=32)
  shapes = _flat_shapes(_init_shapes(_create(cfg), jnp.zeros((1, 32, 32, 3)),
                                     jnp.zeros((1,), jnp.int32)))
  v2 = reference_cases.param_tree("ve__ncsnv2__cifar10")["shapes"]
  rename = {"ResidualBlock": "ConditionalResidualBlock", "RefineBlock": "CondRefineBlock",
            "RCUBlock": "CondRCUBlock", "CRPBlock": "CondCRPBlock", "MSFBlock": "CondMSFBlock",
            "InstanceNorm2dPlus": "ConditionalInstanceNorm2dPlus"}
  pattern = re.compile(r"\b(" + "|".join(rename) + r")_")
  to_v1 = lambda p: pattern.sub(lambda m: rename[m.group(1)] + "_", p)
  convs = {k: s for k, s in shapes.items() if "/Conv_" in k}
  assert convs == {to_v1(k): s for k, s in v2.items() if "/Conv_" in k}
  norms = {k: s for k, s in shapes.items() if "/Conv_" not in k}
  assert all(k.endswith("/Embed_0/embedding") and s[0] == 10 and s[1] % 3 == 0
             for k, s in norms.items())
  # Every unconditional norm of NCSNv2 has its conditional counterpart (same channels) ...
  for k, s in v2.items():
    if k.endswith("/gamma"):
      assert norms[to_v1(k[:-len("gamma")]) + "Embed_0/embedding"] == (10, 3 * s[-1])
  # ... and inside the refine blocks every conv is preceded by a conditional norm of its input.
  for k, s in convs.items():
    if k.startswith("params/CondRefineBlock_") and k.endswith("kernel"):
      norm = re.sub(r"Conv_(\d+)/kernel$", r"ConditionalInstanceNorm2dPlus_\1/Embed_0/embedding", k)
      assert norms[norm] == (10, 3 * s[2]), k
  n_in_refine = sum(1 for k in norms if k.startswith("params/CondRefineBlock_"))
  assert n_in_refine == sum(1 for k in convs if k.startswith("params/CondRefineBlock_")
                            and k.endswith("kernel"))


# ----------------------------------------------------------------------------- forward passes

@pytest.mark.parametrize("name,interpolation,size", [
    ("ncsnv2_64", "bilinear", 32),
    ("ncsnv2_64", "nearest_neighbor", 16),
    ("ncsnv2_128", "bilinear", 32),
    ("ncsnv2_256", "bilinear", 32),
    ("ncsn", "bilinear", 32),
])
def test_forward_matches_numpy_reference(name, interpolation, size):
  cfg = _ncsn_config(image_size=size) if name == "ncsn" else _base_config(name, image_size=size)
  cfg.model.interpolation = interpolation
  model = _create(cfg)
  x = _inputs(2, size)
  labels = jnp.array([0, 7], jnp.int32)
  variables = _random_variables(model, x, labels)
  y = model.apply(variables, x, labels, train=False)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))
  expected = NumpyRefineNet(cfg, variables["params"])(x, labels)
  assert reference_cases.relative_error(y, expected) < 1e-5


def test_output_scales_as_one_over_sigma():
  cfg = _base_config("ncsnv2_64", image_size=16)
  model = _create(cfg)
  x = jnp.concatenate([_inputs(1, 16)] * 3)
  labels = jnp.array([0, 5, 231], jnp.int32)
  variables = _random_variables(model, x, labels)
  y = np.asarray(model.apply(variables, x, labels, train=False))
  sigmas = utils.get_sigmas(cfg)
  for i in (1, 2):  # same image, other noise level: output ratio = inverse sigma ratio
    np.testing.assert_allclose(y[i] / y[0], sigmas[0] / sigmas[labels[i]], rtol=2e-6)
  cfg_raw = cfg.copy_and_resolve_references()
  cfg_raw.model.scale_by_sigma = False
  raw = np.asarray(_create(cfg_raw).apply(variables, x, labels, train=False))
  np.testing.assert_array_equal(raw[0], raw[1])
  expected = raw / np.asarray(sigmas, np.float32)[np.asarray(labels)][:, None, None, None]
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=0)


def test_uncentred_data_is_centred_inside_the_model():
  cfg = _base_config("ncsnv2_64", image_size=16)
  model = _create(cfg)
  x, labels = _inputs(2, 16), jnp.array([3, 4], jnp.int32)
  variables = _random_variables(model, x, labels)
  cfg_c = cfg.copy_and_resolve_references()
  cfg_c.data.centered = True
  y = model.apply(variables, x, labels, train=False)
  y_c = _create(cfg_c).apply(variables, 2 * x - 1., labels, train=False)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_c))


# ----------------------------------------------------------------------------- layers

def test_instance_norm_plus_matches_formula():
  x = _inputs(3, 6, channels=5) * 3. - 1.
  layer = normalization.InstanceNorm2dPlus()
  rng = np.random.default_rng(2)
  params = {k: jnp.asarray(rng.standard_normal((1, 1, 1, 5)), jnp.float32)
            for k in ("alpha", "gamma", "beta")}
  assert _flat_shapes(jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)) == {
      f"params/{k}": (1, 1, 1, 5) for k in ("alpha", "beta", "gamma")}
  y = layer.apply({"params": params}, x)
  expected = np_instance_norm_plus(np.asarray(x, np.float64), params["gamma"], params["alpha"],
                                   params["beta"])
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  y0 = normalization.InstanceNorm2dPlus(bias=False).apply(
      {"params": {k: params[k] for k in ("alpha", "gamma")}}, x)
  np.testing.assert_allclose(np.asarray(y0), expected - np.asarray(params["beta"]), atol=1e-5)


def test_conditional_instance_norm_plus_matches_formula():
  x = _inputs(3, 6, channels=4) * 2.
  y_lab = jnp.array([2, 0, 2], jnp.int32)
  layer = normalization.ConditionalInstanceNorm2dPlus(num_classes=3)
  init = layer.init(jax.random.PRNGKey(0), x, y_lab)
  table0 = np.asarray(init["params"]["Embed_0"]["embedding"])
  assert table0.shape == (3, 12)
  np.testing.assert_array_equal(table0[:, 8:], 0.)  # beta starts at zero
  assert np.all(np.abs(table0[:, :8] - 1.) < 0.2)  # gamma, alpha start near one
  table = np.random.default_rng(3).standard_normal((3, 12)).astype(np.float32)
  out = layer.apply({"params": {"Embed_0": {"embedding": jnp.asarray(table)}}}, x, y_lab)
  rows = table[np.asarray(y_lab)]
  expected = np_instance_norm_plus(np.asarray(x, np.float64), rows[:, :4], rows[:, 4:8],
                                   rows[:, 8:])
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_other_normalizations_match_formula():
  x = np.asarray(_inputs(2, 5, channels=3), np.float64) * 4.
  var = x.var(axis=(1, 2), keepdims=True)
  params = {"scale": np.full((1, 1, 1, 3), 1.5, np.float32),
            "bias": np.full((1, 1, 1, 3), 0.25, np.float32)}
  y = normalization.InstanceNorm2d().apply({"params": params}, jnp.asarray(x, jnp.float32))
  expected = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(var + 1e-5) * 1.5 + 0.25
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  y = normalization.VarianceNorm2d().apply({"params": {"scale": params["scale"]}},
                                           jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y), x / np.sqrt(var + 1e-5) * 1.5, rtol=1e-5, atol=1e-5)


def test_get_normalization_choices():
  cfg = _ncsn_config()
  assert normalization.get_normalization(cfg) is normalization.InstanceNorm2dPlus
  cond = normalization.get_normalization(cfg, conditional=True)
  assert cond().num_classes == cfg.model.num_scales
  cfg.model.normalization = "VarianceNorm"
  assert normalization.get_normalization(cfg) is normalization.VarianceNorm2d
  with pytest.raises(ValueError, match="config.model.normalization"):
    normalization.get_normalization(cfg, conditional=True)
  cfg.model.normalization = "LayerNorm"
  with pytest.raises(ValueError, match="config.model.normalization"):
    normalization.get_normalization(cfg)


def test_resampling_helpers():
  x = _inputs(1, 4, channels=2)
  np.testing.assert_allclose(np.asarray(refinenet_layers.mean_pool_2x2(x)),
                             np_mean_pool(np.asarray(x, np.float64)), rtol=1e-6)
  layer = refinenet_layers.ConvMeanPool(output_dim=3)
  v = layer.init(jax.random.PRNGKey(0), x)
  assert _flat_shapes(v) == {"params/Conv_0/kernel": (3, 3, 2, 3), "params/Conv_0/bias": (3,)}
  expected = np_mean_pool(np_conv(np.asarray(x, np.float64), v["params"]["Conv_0"]))
  np.testing.assert_allclose(np.asarray(layer.apply(v, x)), expected, rtol=1e-5, atol=1e-6)
  layer = refinenet_layers.MeanPoolConv(output_dim=3, kernel_size=1)
  v = layer.init(jax.random.PRNGKey(0), x)
  expected = np_conv(np_mean_pool(np.asarray(x, np.float64)), v["params"]["Conv_0"])
  np.testing.assert_allclose(np.asarray(layer.apply(v, x)), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("field,value", [
    ("nonlinearity", "gelu"), ("normalization", "BatchNorm"), ("interpolation", "bicubic")])
def test_unsupported_config_values_name_the_field(field, value):
  cfg = _base_config("ncsnv2_64", image_size=16, **{field: value})
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    _init_shapes(_create(cfg), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,), jnp.int32))


def test_image_size_must_survive_the_downsampling():
  cfg = _base_config("ncsnv2_256", image_size=20)
  with pytest.raises(ValueError, match="divisible by 8"):
    _init_shapes(_create(cfg), jnp.zeros((1, 20, 20, 3)), jnp.zeros((1,), jnp.int32))
