"""Sample-quality metrics as pure functions over Inception features (numpy, float64 inside).

- `frechet_distance(mu1, sigma1, mu2, sigma2)`: FID's ||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½).
- `kernel_inception_distance(real, fake)`: KID, the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, averaged over random subsets.
- `inception_score(logits)`: exp(E_x KL(p(y|x) || p(y))) per split, mean and std over 10 splits.
- `precision_recall(real, fake)`: improved precision and recall (k-NN manifolds, k = 3).
"""
from typing import Any, Dict, Tuple

import numpy as np
from scipy import linalg
from errors import UserError


def mean_and_covariance(features) -> Tuple[np.ndarray, np.ndarray]:
  """(N, D) features -> mean (D,) and unbiased covariance (D, D) (ddof 1, like np.cov), float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"Need (N >= 2, D) features for a covariance, got shape {features.shape}.")
  mu = features.mean(axis=0)
  centred = features - mu
  return mu, centred.T @ centred / (features.shape[0] - 1)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((S1 S2)^½) for symmetric PSD S1, S2: the eigenvalues of S1 S2 are those of the symmetric
  A S2 A with A = S1^½, so tr((S1 S2)^½) = Σ sqrt(max(eig(A S2 A), 0))."""
  def nonnegative(w):  # eigenvalues below rounding level (a singular covariance) count as 0
    return np.where(w > w.max(initial=0.0) * w.size * np.finfo(np.float64).eps, w, 0.0)

  w, v = linalg.eigh(sigma1)
  root1 = (v * np.sqrt(nonnegative(w))) @ v.T
  middle = root1 @ sigma2 @ root1
  middle = (middle + middle.T) / 2.0
  return float(np.sqrt(nonnegative(linalg.eigvalsh(middle))).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
  """tr((S1 S2)^½) with scipy's matrix square root; a near-singular product is retried with
  eps·I added to both covariances; an imaginary part beyond 1e-3 is an error."""
  product = sigma1.dot(sigma2)
  covmean = linalg.sqrtm(product)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Matrix square root has a large imaginary part "
                       f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are degenerate.")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh", eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  d² = ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½).

  Args:
    mu1, mu2: (D,) means.
    sigma1, sigma2: (D, D) covariances (symmetric positive semi-definite).
    method: 'eigh' (default: symmetric eigen-decompositions, stable for singular covariances, e.g.
      fewer samples than dimensions) or 'sqrtm' (scipy.linalg.sqrtm of sigma1·sigma2, as the
      TensorFlow/PyTorch FID code does, with its eps·I retry).
    eps: the offset of the 'sqrtm' retry.
  Returns:
    The distance (a Python float, >= 0 up to rounding).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"Shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / "
                     f"{sigma2.shape}.")
  if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(sigma1).all()
          and np.isfinite(sigma2).all()):
    raise UserError("Means and covariances must be finite (NaN or inf in the features?).")
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  elif method == "sqrtm":
    tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
  else:
    raise ValueError(f"Unknown method {method!r}; expected 'eigh' or 'sqrtm'.")
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_of_features(features1, features2, **kwargs) -> float:
  """`frechet_distance` of the Gaussians fitted to two (N_i, D) feature sets."""
  return frechet_distance(*mean_and_covariance(features1), *mean_and_covariance(features2),
                          **kwargs)


def frechet_distance_to_gaussian(features, mu, sigma) -> float:
  """`frechet_distance` between the Gaussian fitted to `features` (N, D) and N(mu, sigma).

  With N <= D (fewer samples than feature dimensions) the sample covariance S = AᵀA / (N - 1)
  (A: the centred features) has rank < N, and the non-zero eigenvalues of S·sigma are those of
  the N×N matrix A·sigma·Aᵀ / (N - 1): tr((S sigma)^½) is found from an N×N eigenproblem instead of
  two D×D ones. Otherwise this is `frechet_distance` of the features' mean and covariance.
  """
  features = np.asarray(features, np.float64)
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  n, d = features.shape
  if n > d or n < 2:
    return frechet_distance(*mean_and_covariance(features), mu, sigma)
  if mu.shape != (d,) or sigma.shape != (d, d):
    raise ValueError(f"Shapes do not match: features {features.shape}, mu {mu.shape}, sigma "
                     f"{sigma.shape}.")
  mean = features.mean(axis=0)
  centred = features - mean
  small = centred @ sigma @ centred.T / (n - 1)
  small = (small + small.T) / 2.0
  w = linalg.eigvalsh(small)
  w = np.where(w > w.max(initial=0.0) * w.size * np.finfo(np.float64).eps, w, 0.0)
  diff = mean - mu
  return float(diff.dot(diff) + (centred ** 2).sum() / (n - 1) + np.trace(sigma)
               - 2.0 * np.sqrt(w).sum())


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(real, fake) -> float:
  """The unbiased MMD² between whole feature sets (N_real, D) and (N_fake, D), sizes n and m,
  with KID's kernel k(x, y) = (x·y / D + 1)³:
  Σ_{i≠j} k(x_i, x_j) / (n (n − 1)) + Σ_{i≠j} k(y_i, y_j) / (m (m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / (n m).
  """
  x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy))
               / (m * (m - 1)) - 2.0 * kxy.sum() / (n * m))


def kernel_inception_distance(real, fake, num_subsets: int = 100, max_subset_size: int = 1000,
                              seed: int = 0) -> Dict[str, float]:
  """KID: unbiased MMD² between feature sets with k(x, y) = (x·y / D + 1)³, over subsets.

  Each subset draws m = min(N_real, N_fake, max_subset_size) rows of each set without replacement
  and estimates MMD² = [Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m - 1))
  - 2 Σ_{i,j} k(x_i, y_j) / m², which is unbiased (its expectation is 0 when both sets come from one
  distribution; single estimates may be negative).

  Args:
    real, fake: (N_real, D), (N_fake, D) features.
    num_subsets, max_subset_size: subsets averaged (clean-fid / StyleGAN defaults 100 and 1000).
    seed: seed of the subset draws.
  Returns:
    {'mean': mean over subsets, 'std': their standard deviation, 'subset_size': m,
     'num_subsets': count}.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"KID needs (N, D) feature sets of one D, got {real.shape} and {fake.shape}.")
  m = min(real.shape[0], fake.shape[0], int(max_subset_size))
  if m < 2:
    raise ValueError(f"KID needs at least 2 features in each set, got {real.shape[0]} and "
                     f"{fake.shape[0]}.")
  rng = np.random.default_rng(seed)
  estimates = np.empty(int(num_subsets))
  for s in range(int(num_subsets)):
    x = real[rng.choice(real.shape[0], m, replace=False)]
    y = fake[rng.choice(fake.shape[0], m, replace=False)]
    estimates[s] = unbiased_mmd2(x, y)
  return dict(mean=float(estimates.mean()), std=float(estimates.std()), subset_size=m,
              num_subsets=int(num_subsets))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits, splits: int = 10) -> Dict[str, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) of (N, K) logits, per split.

  The images are cut into `splits` consecutive parts (as the original code does: part i holds rows
  [i·N/splits, (i+1)·N/splits)); p(y) is each part's mean softmax.

  Returns:
    {'mean', 'std'} over the splits (1 for uniform predictions, up to K for confident, diverse
    ones) and 'splits'.
  """
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if logits.ndim != 2 or n < splits or splits < 1:
    raise ValueError(f"Inception Score needs (N >= splits, K) logits with splits >= 1; got shape "
                     f"{logits.shape} and splits={splits}.")
  log_p = _log_softmax(logits)
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    part_log_p, part_p = log_p[i * n // splits:(i + 1) * n // splits], p[
        i * n // splits:(i + 1) * n // splits]
    log_marginal = np.log(part_p.mean(axis=0))
    kl = (part_p * (part_log_p - log_marginal)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return dict(mean=float(np.mean(scores)), std=float(np.std(scores)), splits=int(splits))


def _kth_neighbour_radii(features: np.ndarray, k: int, batch_size: int) -> np.ndarray:
  """Distance from each row to its k-th nearest other row (N,)."""
  norms = (features ** 2).sum(axis=1)
  radii = np.empty(features.shape[0])
  for start in range(0, features.shape[0], batch_size):
    block = features[start:start + batch_size]
    d2 = norms[start:start + batch_size, None] + norms[None, :] - 2.0 * block @ features.T
    # Index k of the sorted row: index 0 is the row itself (distance 0).
    radii[start:start + batch_size] = np.sqrt(np.maximum(
        np.partition(d2, k, axis=1)[:, k], 0.0))
  return radii


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                     batch_size: int) -> float:
  centre_norms = (centres ** 2).sum(axis=1)
  inside = 0
  for start in range(0, points.shape[0], batch_size):
    block = points[start:start + batch_size]
    d2 = (block ** 2).sum(axis=1)[:, None] + centre_norms[None, :] - 2.0 * block @ centres.T
    inside += int(np.any(d2 <= radii[None, :] ** 2, axis=1).sum())
  return inside / points.shape[0]


def precision_recall(real, fake, k: int = 3, batch_size: int = 1024) -> Dict[str, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) of (N_real, D), (N_fake, D) features.

  Each set's manifold is the union of balls around its points with radius the distance to the
  k-th nearest neighbour within the set. Precision: fraction of fake points inside the real
  manifold; recall: fraction of real points inside the fake manifold. O(N²) distances.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"Precision/recall with k={k} needs more than {k} features per set, got "
                     f"{real.shape[0]} and {fake.shape[0]}.")
  real_radii = _kth_neighbour_radii(real, k, batch_size)
  fake_radii = _kth_neighbour_radii(fake, k, batch_size)
  return dict(precision=_fraction_inside(fake, real, real_radii, batch_size),
              recall=_fraction_inside(real, fake, fake_radii, batch_size), k=int(k))


def radial_deviation(sample_amplitude, data_amplitude, num_bins: int,
                     transform: str = "dct") -> Dict[str, Any]:
  """Frequency deviation Dev = S_samples / S_data per coordinate, averaged per radial bin.

  Args:
    sample_amplitude, data_amplitude: (H, W) mean-amplitude maps (`tdas.stats.mean_amplitude`)
      of the samples and of the data, both of images in [0, 1].
    num_bins: equal-width bins of the normalised radius rho in [0, 1].
    transform: 'dct' or 'dft', the maps' transform.
  Returns:
    {'radius': bin centres (num_bins,), 'deviation': mean Dev per bin (None for a bin without
     coordinates), 'mean_abs_log_deviation': mean over bins of |ln Dev| (0 when the spectra
     agree)} as JSON-ready lists and floats.
  """
  from tdas import stats as tdas_stats  # pylint: disable=g-import-not-at-top
  sample_amplitude = np.asarray(sample_amplitude, np.float64)
  data_amplitude = np.asarray(data_amplitude, np.float64)
  if sample_amplitude.shape != data_amplitude.shape:
    raise ValueError(f"The data's frequency statistics are {data_amplitude.shape}, the samples' "
                     f"spectrum is {sample_amplitude.shape}: they come from different image "
                     "sizes.")
  centres, deviation = tdas_stats.radial_profile(
      tdas_stats.deviation_ratio(sample_amplitude, data_amplitude), num_bins, transform)
  valid = np.isfinite(deviation) & (deviation > 0)
  summary = float(np.mean(np.abs(np.log(deviation[valid])))) if valid.any() else None
  return dict(radius=[float(c) for c in centres],
              deviation=[float(d) if np.isfinite(d) else None for d in deviation],
              mean_abs_log_deviation=summary)
