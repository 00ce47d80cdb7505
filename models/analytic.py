"""The analytic Gaussian score model: the exact score of a diffused Gaussian target.

A learned-model-free benchmark for TDAS. The target is x0 ~ N(mu, Sigma) over images (H, W, C)
with a covariance that is diagonal in the orthonormal 2-D DCT basis D of `tdas.transforms`:
Sigma = D⁻¹ diag(v) D, v (H, W, C) the variance of each DCT coefficient (channels independent).
Diffused by the config's SDE (docs/numerics.md §2), x_t | x0 ~ N(a(t) x0, s(t)² I), so

    p_t = N(a mu, a² Sigma + s² I),   score(x, t) = -D⁻¹( D(x - a mu) / (a² v + s²) )

with a = 1, s = sigma(t) for VE and a = exp(m(t)), s = the std of `sde.marginal_prob` for VP and
subVP (for subVP that "std", 1 - exp(2m), is the true marginal std of the subVP SDE started at a
point, so the formula is exact for all three).

The network convention is that of every score_sde model (docs/numerics.md §3), continuous labels only:
VE labels are sigma(t) and the output is the score; VP/subVP labels are 999 t and the output is
-s(t)·score (`models.utils.get_score_fn` divides by -s(t)). So
`get_score_fn(sde, model, variables, continuous=True)` is the exact score.

Variables: `{'target': {'mean': (H, W, C), 'dct_variance': (H, W, C)}}`, a non-'params'
collection (nothing is trainable). `model.init` fills it with the config's target (`config_target`):
the `.npz` named by `config.model.target_file` (keys `mean`, `dct_variance`, e.g. the
`analytic_<dataset>_<size>.npz` that `--mode stats` fits to a data set), or else the power-law
target (`power_law_target`); `variables_from_target(*fit_target(images))` builds it from data.

Optional two-class mixture (`config.model.class_offset` = delta > 0): the target is
½ N(mu - o, Sigma) + ½ N(mu + o, Sigma), classes 0 and 1, with the offset o = D⁻¹(delta sqrt(v))
(delta target standard deviations in every DCT coefficient). Its noise-conditional posterior is
logistic in x: with u = D(x - a mu), ô = D(o) and c = a² v + s²,

    log p_t(y = 1 | x) - log p_t(y = 0 | x) = l = 2 a sum(ô u / c),
    score(x, t) = -D⁻¹( (u - a ô tanh(l / 2)) / c ),

so score + ∇ log p_t(y | x) is the score of N(a (mu ± o), a² Sigma + s² I): classifier guidance with
scale 1 and the exact classifier (`AnalyticMixtureClassifier`) samples one class exactly. The
variables then also hold `class_offset` (H, W, C).

Optional score error (docs/numerics.md §7, `config.model.score_error`): below the noise level
`score_error_sigma_c` the score's DCT coefficients are multiplied by gamma = 1 - e·rho^p, rho the
normalised DCT radius — a model that under-corrects high frequencies at low noise (e > 0) or
over-corrects them (e < 0).

Config fields read (all under `config.model`; set by `configs/analytic/__init__.py`, and taken
from MODEL_FIELD_DEFAULTS when a config lacks them):
  target_file, power_law_alpha, power_law_f0, target_std, target_mean, target_mean_radial,
  score_error, score_error_e, score_error_p, score_error_sigma_c;
and `config.data.image_size/num_channels`, `config.training.sde/continuous`, the SDE fields.
"""
import functools
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.fft

import sde_lib
from models import utils
from tdas import files as tdas_files
from tdas import filters as tdas_filters
from tdas import transforms
from errors import UserError

TARGET_COLLECTION = 'target'

# Defaults of the config fields this model reads; a config lacking one of them gets this value
# (the configs under configs/analytic/ set them all explicitly).
MODEL_FIELD_DEFAULTS = dict(
    target_file='',
    power_law_alpha=2.0,
    power_law_f0=1.0,
    target_std=0.27,
    target_mean=(0.52, 0.43, 0.38),
    target_mean_radial=0.1,
    score_error=False,
    score_error_e=0.2,
    score_error_p=1.0,
    score_error_sigma_c=0.27,
    class_offset=0.0,
)
CLASS_NAMES = ('mean - offset', 'mean + offset')  # the mixture's classes 0 and 1


def _field(config, name):
  """config.model.<name>, or its default from MODEL_FIELD_DEFAULTS."""
  return config.model.get(name, MODEL_FIELD_DEFAULTS[name])


def _per_channel(value, num_channels, field):
  """A scalar or a length-C sequence as a float64 array (C,)."""
  array = np.asarray(value, np.float64).reshape(-1)
  if array.size == 1:
    return np.full((num_channels,), float(array[0]))
  if array.size != num_channels:
    raise UserError(f'config.model.{field}={value!r} must be a scalar or have one value per '
                     f'channel (config.data.num_channels={num_channels}).')
  return array


# ---------------------------------------------------------------------------------------------
# Frequency geometry.


def frequency_radius(height: int, width: int) -> np.ndarray:
  """DCT frequency radius f(i, j) = sqrt(i² + j²) in index units, float64 (H, W)."""
  i = np.arange(height, dtype=np.float64)[:, None]
  j = np.arange(width, dtype=np.float64)[None, :]
  return np.sqrt(i ** 2 + j ** 2)


def normalized_radius(height: int, width: int) -> np.ndarray:
  """rho(i, j) in [0, 1] of the DCT (docs/numerics.md §6), float64 (H, W): TDAS's own definition."""
  return tdas_filters.normalized_radius(height, width, "dct")


# Images up to this size take the score's DCTs as two products with the DCT matrix. On the 2-core
# CPU a DCT and its inverse then cost 0.22 ms per 64 x 64 x 3 image against 1.04 ms through
# jax.scipy.fft's FFT-based DCT, and 6.6 ms against 18.1 ms at 256 px (measured). The matrices'
# n³ cost overtakes the FFT's n² log n near 1024 px.
MATRIX_DCT_MAX_SIZE = 512


def _dct_matrix(n: int) -> np.ndarray:
  """The orthonormal DCT-II matrix (n, n) float32: row k is the k-th basis vector."""
  return scipy.fft.dct(np.eye(n), type=2, norm='ortho', axis=0).astype(np.float32)


def _matrix_dct2(x, inverse: bool = False):
  """Orthonormal 2-D DCT-II (or its inverse) over axes (1, 2) of (B, H, W, C) as C_H x C_Wᵀ."""
  rows, cols = jnp.asarray(_dct_matrix(x.shape[1])), jnp.asarray(_dct_matrix(x.shape[2]))
  spec = 'ji,bjkc,kl->bilc' if inverse else 'ij,bjkc,lk->bilc'
  return jnp.einsum(spec, rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _score_dct2(x, inverse: bool = False):
  """The score's DCT (or inverse): by matrices up to MATRIX_DCT_MAX_SIZE px, else by FFT."""
  if max(x.shape[1], x.shape[2]) <= MATRIX_DCT_MAX_SIZE:
    return _matrix_dct2(x, inverse)
  return transforms.idct2(x) if inverse else transforms.dct2(x)


# Single compiled programs: inside a jitted sampler they inline as usual; called eagerly (tests,
# notebooks) they compile once per shape instead of primitive by primitive.
_dct2 = jax.jit(_score_dct2)
_idct2 = jax.jit(lambda coefficients: _score_dct2(coefficients, inverse=True))


def _dct_np(x):
  """Orthonormal DCT-II over axes (1, 2) of a float64 numpy batch (N, H, W, C)."""
  return scipy.fft.dctn(x, type=2, axes=(1, 2), norm='ortho')


# ---------------------------------------------------------------------------------------------
# Targets.


def variables_from_target(mean, dct_variance,
                          class_offset=None) -> Dict[str, Dict[str, jnp.ndarray]]:
  """Model variables `{'target': {'mean', 'dct_variance'[, 'class_offset']}}` from arrays
  (H, W, C) each; `class_offset` makes the target the two-class mixture (module docstring)."""
  mean = jnp.asarray(mean, jnp.float32)
  dct_variance = jnp.asarray(dct_variance, jnp.float32)
  if mean.ndim != 3 or mean.shape != dct_variance.shape:
    raise ValueError('The target mean and dct_variance must both be (H, W, C) arrays; got '
                     f'{mean.shape} and {dct_variance.shape}.')
  target = {'mean': mean, 'dct_variance': dct_variance}
  if class_offset is not None:
    target['class_offset'] = jnp.asarray(class_offset, jnp.float32).reshape(mean.shape)
  return {TARGET_COLLECTION: target}


def class_offset_image(dct_variance, delta: float) -> np.ndarray:
  """The mixture's offset o = D⁻¹(delta sqrt(v)) (H, W, C) float32 for dct_variance v (H, W, C)."""
  coefficients = delta * np.sqrt(np.asarray(dct_variance, np.float64))
  return scipy.fft.idctn(coefficients, type=2, axes=(0, 1), norm='ortho').astype(np.float32)


def config_class_offset(config, dct_variance):
  """The config's class offset image (H, W, C), or None when `model.class_offset` is 0."""
  delta = float(_field(config, 'class_offset'))
  if not np.isfinite(delta) or delta < 0:
    raise UserError(f'config.model.class_offset={delta!r} must be >= 0 (0: one Gaussian).')
  return class_offset_image(dct_variance, delta) if delta > 0 else None


def _class_offset(variables):
  """The mixture's offset (H, W, C) held by the variables, or None (one Gaussian)."""
  return variables.get(TARGET_COLLECTION, variables).get('class_offset')


def class_variables(variables, label: int) -> Dict[str, Dict[str, jnp.ndarray]]:
  """The variables of the mixture's class `label` alone: the Gaussian N(mu ± o, Sigma)."""
  mean, dct_variance = _target_arrays(variables)
  offset = _class_offset(variables)
  if offset is None:
    raise ValueError('These analytic variables hold one Gaussian (no class_offset).')
  if label not in (0, 1):
    raise ValueError(f'The analytic mixture has classes 0 and 1, got {label!r}.')
  return variables_from_target(mean + (2 * label - 1) * offset, dct_variance)


def _target_arrays(variables):
  """(mean, dct_variance) of `{'target': {...}}` or of the inner `{'mean', 'dct_variance'}`."""
  target = variables.get(TARGET_COLLECTION, variables)
  try:
    return target['mean'], target['dct_variance']
  except KeyError as error:
    raise ValueError("Expected the analytic model's variables {'target': {'mean': (H, W, C), "
                     f"'dct_variance': (H, W, C)}}}}, got keys {sorted(variables)}.") from error


def power_law_target(config) -> Tuple[np.ndarray, np.ndarray]:
  """The config's power-law Gaussian target: (mean (H, W, C), dct_variance (H, W, C)), float32.

  - dct_variance[i, j, c] ∝ 1 / (f + f0)^alpha, f = sqrt(i² + j²) (index units),
    alpha = `model.power_law_alpha`, f0 = `model.power_law_f0`; scaled per channel so the RMS
    per-pixel std, sqrt(sum_ij v[i, j, c] / (H W)), equals `model.target_std` (scalar or per
    channel). alpha = 2 is the 1/f² power spectrum of natural images.
  - mean[h, w, c] = target_mean[c] + target_mean_radial · (1/2 - r(h, w)), r the distance from the
    image centre divided by the centre-to-corner distance: a smooth image, brighter in the centre
    (like FFHQ's mean face) when target_mean_radial > 0. It must stay in [0, 1]
    (data.centered = False).
  """
  size = int(config.data.image_size)
  channels = int(config.data.num_channels)
  if size < 1 or channels < 1:
    raise UserError(f'config.data.image_size={config.data.image_size!r} and '
                     f'config.data.num_channels={config.data.num_channels!r} must be positive.')
  alpha = float(_field(config, 'power_law_alpha'))
  f0 = float(_field(config, 'power_law_f0'))
  if alpha < 0:
    raise UserError(f'config.model.power_law_alpha={alpha!r} must be >= 0.')
  if f0 <= 0:
    raise UserError(f'config.model.power_law_f0={f0!r} must be > 0 (the DC coefficient would '
                     'get an infinite variance).')
  std = _per_channel(_field(config, 'target_std'), channels, 'target_std')
  if np.any(std <= 0):
    raise UserError(f'config.model.target_std={_field(config, "target_std")!r} must be > 0.')
  base = _per_channel(_field(config, 'target_mean'), channels, 'target_mean')
  radial = float(_field(config, 'target_mean_radial'))

  shape_weights = (frequency_radius(size, size) + f0) ** (-alpha)            # (H, W)
  scale = size * size * std ** 2 / shape_weights.sum()                       # (C,)
  dct_variance = shape_weights[:, :, None] * scale[None, None, :]

  centre = (size - 1) / 2.0
  h = np.arange(size, dtype=np.float64)[:, None] - centre
  w = np.arange(size, dtype=np.float64)[None, :] - centre
  corner = np.sqrt(2.0) * centre
  r = np.sqrt(h ** 2 + w ** 2) / (corner if corner > 0 else 1.0)
  mean = base[None, None, :] + radial * (0.5 - r)[:, :, None]
  if mean.min() < 0 or mean.max() > 1:
    raise UserError(
        f'The target mean image leaves [0, 1] (range [{mean.min():.3f}, {mean.max():.3f}]): '
        f'reduce config.model.target_mean_radial={radial!r} or move config.model.target_mean='
        f'{_field(config, "target_mean")!r} towards 0.5.')
  return mean.astype(np.float32), dct_variance.astype(np.float32)


def config_target(config) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, dct_variance) (H, W, C) of the config: `model.target_file` if set, else the power law."""
  path = _field(config, 'target_file')
  if path:
    shape = (int(config.data.image_size), int(config.data.image_size),
             int(config.data.num_channels))
    return tdas_files.read_analytic_target(path, shape)
  return power_law_target(config)


def target_variables(config) -> Dict[str, Dict[str, jnp.ndarray]]:
  """`{'target': {'mean', 'dct_variance'[, 'class_offset']}}` (H, W, C) of the config's target
  (`config_target`; the offset with `model.class_offset` > 0)."""
  mean, dct_variance = config_target(config)
  return variables_from_target(mean, dct_variance, config_class_offset(config, dct_variance))


def _moments(images, batch_size: int, mean=None):
  """Per-pixel mean (H, W, C) and per-DCT-coefficient unbiased variance (H, W, C), float64.

  `images` is an array (N, H, W, C), or a zero-argument callable that returns a fresh iterable of
  batches (n, H, W, C) (e.g. a data set streamed from disk). Two passes over chunks of
  `batch_size` images (or over the batches), so N large images never sit in float64 at once; one
  pass when the caller already knows the `mean` image.
  """
  if callable(images):
    batches = images
  else:
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f'Expected images (N, H, W, C), got shape {images.shape}.')
    batches = lambda: (images[s:s + batch_size] for s in range(0, images.shape[0], batch_size))
  if mean is None:
    n, total = 0, None
    for batch in batches():
      batch = np.asarray(batch, np.float64)
      if batch.ndim != 4 or (total is not None and batch.shape[1:] != total.shape):
        raise ValueError('Expected batches of images (n, H, W, C) of one shape, got '
                         f'{batch.shape}.')
      total = batch.sum(axis=0) if total is None else total + batch.sum(axis=0)
      n += batch.shape[0]
    if n < 2:
      raise ValueError(f'Need at least 2 images to estimate variances, got {n}.')
    mean = total / n
  mean = np.asarray(mean, np.float64)
  n, squares = 0, np.zeros(mean.shape, np.float64)
  for batch in batches():
    batch = np.asarray(batch, np.float64)
    if batch.ndim != 4 or batch.shape[1:] != mean.shape:
      raise ValueError(f'Expected batches of images (n, {", ".join(map(str, mean.shape))}), got '
                       f'{batch.shape}.')
    squares += (_dct_np(batch - mean) ** 2).sum(axis=0)
    n += batch.shape[0]
  if n < 2:
    raise ValueError(f'Need at least 2 images to estimate variances, got {n}.')
  return mean, squares / (n - 1)


def fit_target(images, batch_size: int = 256, mean=None) -> Tuple[np.ndarray, np.ndarray]:
  """Gaussian target fitted to images (N, H, W, C) in [0, 1].

  `images` may also be a zero-argument callable returning a fresh iterable of batches
  (n, H, W, C) in [0, 1]: the fit then streams (two passes), for data sets that do not fit in
  memory. Returns (mean (H, W, C), dct_variance (H, W, C)) as float32: the mean image, and the
  unbiased variance of each orthonormal DCT coefficient of (x - mean). Computed in float64 numpy.
  A known `mean` image (H, W, C) saves the first pass.
  """
  mean, variance = _moments(images, batch_size, mean)
  return mean.astype(np.float32), variance.astype(np.float32)


@functools.partial(jax.jit, static_argnums=3)
def _sample(key, mean, dct_variance, num):
  z = jax.random.normal(key, (num,) + mean.shape, jnp.float32)
  return mean + transforms.idct2(jnp.sqrt(dct_variance) * z)


def sample_target(key, variables, num: int, labels=None):
  """`num` exact draws (num, H, W, C) of the target: mu + D⁻¹(sqrt(v) ⊙ z), z ~ N(0, I).

  `variables` is the model's `{'target': {...}}` (or the inner dict); jitted, one compile per
  (num, H, W, C). For the two-class mixture each draw adds (2 y - 1) o, with y from `labels`
  (num,) when given, else y ~ Bernoulli(½) from a key split off `key`.
  """
  mean, dct_variance = _target_arrays(variables)
  offset = _class_offset(variables)
  if offset is None:
    if labels is not None:
      raise ValueError('Labels given, but these analytic variables hold one Gaussian.')
    return _sample(key, jnp.asarray(mean, jnp.float32), jnp.asarray(dct_variance, jnp.float32),
                   int(num))
  key, label_key = jax.random.split(key)
  if labels is None:
    labels = jax.random.bernoulli(label_key, 0.5, (int(num),)).astype(jnp.int32)
  signs = (2.0 * jnp.asarray(labels, jnp.float32) - 1.0).reshape(-1, 1, 1, 1)
  x = _sample(key, jnp.asarray(mean, jnp.float32), jnp.asarray(dct_variance, jnp.float32),
              int(num))
  return x + signs * jnp.asarray(offset, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Benchmark metrics.


def dct_diagonal_w2(samples, variables, batch_size: int = 256) -> float:
  """Per-dimension W2 between the DCT-diagonal Gaussian fitted to `samples` and the target.

  Args:
    samples: (N, H, W, C), N >= 2.
    variables: the model's variables (or the inner target dict).
    batch_size: images per chunk of the float64 statistics.

  Returns:
    sqrt( (||m_s - mu||² + sum (sqrt(v_s) - sqrt(v))²) / (H W C) ), with m_s the sample mean and
    v_s the unbiased sample variance of every DCT coefficient: the exact W2 between two Gaussians
    that are both diagonal in the DCT basis, divided by the dimension under the root.
  """
  mean, dct_variance = (np.asarray(a, np.float64) for a in _target_arrays(variables))
  sample_mean, sample_variance = _moments(samples, batch_size)
  if sample_mean.shape != mean.shape:
    raise ValueError(f'Samples of shape {sample_mean.shape} do not match the target '
                     f'{mean.shape}.')
  squared = (np.sum((sample_mean - mean) ** 2)
             + np.sum((np.sqrt(sample_variance) - np.sqrt(dct_variance)) ** 2))
  return float(np.sqrt(squared / mean.size))


def radial_bands(height: int, width: int, num_bands: int) -> np.ndarray:
  """Band index (H, W) int of each DCT coefficient: equal-width bins of rho over [0, 1]."""
  if num_bands < 1:
    raise UserError(f'num_bands={num_bands!r} must be >= 1.')
  return tdas_filters.radial_bin(normalized_radius(height, width), num_bands)


def band_std_ratio(samples, variables, num_bands: int, batch_size: int = 256) -> np.ndarray:
  """Per radial band, sqrt(mean sample DCT variance / mean target DCT variance), (num_bands,).

  Bands are equal-width bins of the normalised DCT radius rho in [0, 1]; the means run over the
  coefficients of a band and all channels. A band with no coefficient (tiny images) is NaN.
  > 1: the samples carry excess amplitude in that band.
  """
  _, dct_variance = (np.asarray(a, np.float64) for a in _target_arrays(variables))
  _, sample_variance = _moments(samples, batch_size)
  if sample_variance.shape != dct_variance.shape:
    raise ValueError(f'Samples of shape {sample_variance.shape} do not match the target '
                     f'{dct_variance.shape}.')
  bands = radial_bands(dct_variance.shape[0], dct_variance.shape[1], num_bands)
  ratios = np.full((num_bands,), np.nan)
  for band in range(num_bands):
    inside = bands == band
    if inside.any():
      ratios[band] = np.sqrt(sample_variance[inside].mean() / dct_variance[inside].mean())
  return ratios


# ---------------------------------------------------------------------------------------------
# Score error (docs/numerics.md §7).


def check_score_error_fields(config) -> Tuple[bool, float, float, float]:
  """(enabled, e, p, sigma_c) of `config.model.score_error*`, validated."""
  enabled = bool(_field(config, 'score_error'))
  e = float(_field(config, 'score_error_e'))
  p = float(_field(config, 'score_error_p'))
  sigma_c = float(_field(config, 'score_error_sigma_c'))
  if enabled:
    if e >= 1:
      raise UserError(f'config.model.score_error_e={e!r} must be < 1 (gamma = 1 - e·rho^p would '
                       'reach 0 or flip the score); e < 0 gives the opposite error, gamma > 1.')
    if p <= 0:
      raise UserError(f'config.model.score_error_p={p!r} must be > 0 (gamma at rho = 0 is 1).')
    if sigma_c <= 0:
      raise UserError(f'config.model.score_error_sigma_c={sigma_c!r} must be > 0.')
  return enabled, e, p, sigma_c


def score_error_gamma(sigma, height: int, width: int, e: float, p: float, sigma_c: float):
  """gamma(rho, sigma) = 1 - e·rho^p where sigma < sigma_c, else 1; (B, H, W, 1) for sigma (B,)."""
  profile = jnp.asarray(1.0 - e * normalized_radius(height, width) ** p, jnp.float32)
  below = (jnp.asarray(sigma) < sigma_c).reshape(-1, 1, 1, 1)
  return jnp.where(below, profile[None, :, :, None], jnp.float32(1.0))


# ---------------------------------------------------------------------------------------------
# The model.


def _declare_target(module: nn.Module, config, x):
  """Declares the target variables in `module` (filled from the config at init) and returns
  (mean, dct_variance, class_offset or None), each (H, W, C), checked against x (B, H, W, C)."""
  init_target = lambda: config_target(config)
  mean = module.variable(TARGET_COLLECTION, 'mean', lambda: jnp.asarray(init_target()[0])).value
  dct_variance = module.variable(TARGET_COLLECTION, 'dct_variance',
                                 lambda: jnp.asarray(init_target()[1])).value
  offset = None
  if float(_field(config, 'class_offset')) != 0.0:
    offset = module.variable(TARGET_COLLECTION, 'class_offset', lambda: jnp.asarray(
        config_class_offset(config, init_target()[1]))).value
  if mean.shape != x.shape[1:] or dct_variance.shape != x.shape[1:]:
    raise UserError(f'The analytic target has mean {mean.shape} and dct_variance '
                     f'{dct_variance.shape}, but x is {x.shape} (B, H, W, C): check '
                     'config.data.image_size and config.data.num_channels.')
  return mean, dct_variance, offset


def _mixture_logit(coefficients, a4, offset_dct, variance):
  """l = log p(y = 1 | x) - log p(y = 0 | x), (B,), of the two-class mixture: 2 a sum(ô u / c)
  with u the DCT of x - a mu (`coefficients`, (B, H, W, C)), ô = D(o) (`offset_dct`,
  (1, H, W, C)) and c = a² v + s² (`variance`, (B, H, W, C))."""
  return 2.0 * a4.reshape(-1) * jnp.sum(offset_dct * coefficients / variance, axis=(1, 2, 3))


@utils.register_model(name='analytic_gaussian')
class AnalyticGaussian(nn.Module):
  """Exact score of the DCT-diagonal Gaussian target (or two-class mixture of such Gaussians,
  `model.class_offset`) diffused by `config.training.sde`.

  Called as `model.apply(variables, x, labels, train=False)` with x (B, H, W, C) and continuous
  labels (B,) (VE: sigma(t); VP/subVP: 999 t). Returns (B, H, W, C): the score (VE) or
  -std(t)·score (VP/subVP), as `models.utils.get_score_fn` expects.
  """
  config: ml_collections.ConfigDict
  # Nothing to load: `checkpoints.load_variables` builds the variables from the config with this.
  variables_from_config = staticmethod(target_variables)

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    del train  # deterministic, no dropout
    config = self.config
    if not config.training.continuous:
      raise UserError('The analytic_gaussian model takes continuous labels only: set '
                       'config.training.continuous=True.')
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.floating):
      raise UserError(f'The analytic_gaussian model got {labels.dtype} labels (discrete indices);'
                       ' it takes continuous labels (config.training.continuous=True).')
    sde = sde_lib.get_sde(config, num_steps=1)  # marginals only: N is irrelevant
    score_error, e, p, sigma_c = check_score_error_fields(config)
    mean, dct_variance, offset = _declare_target(self, config, x)

    labels = labels.astype(jnp.float32).reshape(-1)
    if isinstance(sde, sde_lib.VESDE):
      a = jnp.ones_like(labels)
      s = labels                                     # labels = sigma(t)
    else:                                            # VPSDE and subVPSDE: labels = 999 t
      t = labels / 999.0
      a, s = sde.marginal_prob(jnp.ones((labels.shape[0], 1, 1, 1), jnp.float32), t)
      a = a.reshape(-1)
    a4, s4 = a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)

    coefficients = _dct2(x - a4 * mean)
    variance = a4 ** 2 * dct_variance + s4 ** 2
    if offset is not None:
      # The mixture: u - a ô E[2y - 1 | x], E[2y - 1 | x] = tanh(l / 2).
      offset_dct = _dct2(offset[None])
      half_logit = 0.5 * _mixture_logit(coefficients, a4, offset_dct, variance)
      coefficients = coefficients - a4 * offset_dct * jnp.tanh(half_logit).reshape(-1, 1, 1, 1)
    score_dct = -coefficients / variance
    if score_error:
      score_dct = score_dct * score_error_gamma(s, x.shape[1], x.shape[2], e, p, sigma_c)
    score = _idct2(score_dct).astype(x.dtype)
    if isinstance(sde, sde_lib.VESDE):
      return score
    return -s4.astype(x.dtype) * score


class AnalyticMixtureClassifier(nn.Module):
  """The exact noise-conditional classifier of the two-class mixture target: logits
  (-l / 2, l / 2) of p_t(y | x), (B, 2), for x (B, H, W, C) at the marginal's noise std (B,)
  (score_sde's classifier convention: VE sigma(t); VP sqrt(1 - a²); subVP 1 - a²).

  Called as `apply(variables, x, noise_std)` with the analytic model's own variables.
  """
  config: ml_collections.ConfigDict
  num_classes = 2

  @nn.compact
  def __call__(self, x, noise_std, train: bool = False):
    del train
    config = self.config
    mean, dct_variance, offset = _declare_target(self, config, x)
    if offset is None:
      raise UserError('Guidance with the analytic classifier needs the two-class mixture target: '
                       'set config.model.class_offset > 0.')
    s = jnp.asarray(noise_std, jnp.float32).reshape(-1)
    a = sde_lib.mean_scale_from_std(sde_lib.get_sde(config, num_steps=1), s)
    a4, s4 = a.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
    coefficients = _dct2(x - a4 * mean)
    logit = _mixture_logit(coefficients, a4, _dct2(offset[None]),
                           a4 ** 2 * dct_variance + s4 ** 2)
    return jnp.stack([-0.5 * logit, 0.5 * logit], axis=-1)
