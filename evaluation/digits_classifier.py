"""An offline quality measure for the digits demo: a small CNN trained by this project on the same
data (scikit-learn's digits, 16 px grey, in [0, 1]) stands in for Inception.

- `DigitsClassifier`: three 3x3 convolutions (32, 32 stride 2, 64 stride 2) and a 64-wide dense
  layer, the penultimate features; a 10-way linear head on top.
- `train_classifier`: trains it on the 1497 training digits (random 1-px shifts) and reports its
  accuracy on the 300 held-out ones.
- `DigitsQuality`: the Fréchet distance between the penultimate features of samples and of the
  held-out digits (FID's formula on this network's features), the entropy of the classifier's mean
  label distribution over the samples (mode coverage: ln 10 = 2.303 when all ten digits are
  equally frequent) and the samples' mean per-image label entropy (low when digits are legible).

The weights the benchmark uses ship in `assets/digits_classifier.msgpack` (with a `.json` of how
they were made); `python -m tools.train_digits_classifier` retrains and rewrites both.
"""
import json
import os
from typing import Dict, Tuple

from absl import logging
import flax.linen as nn
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import special

import datasets
from atomic_io import atomic_write, atomic_write_text
from errors import MissingFileError, UserError

NUM_CLASSES = 10
IMAGE_SHAPE = (16, 16, 1)
ASSETS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                       "assets"))
DEFAULT_WEIGHTS = os.path.join(ASSETS, "digits_classifier.msgpack")


class DigitsClassifier(nn.Module):
  """(B, 16, 16, 1) images in [0, 1] -> (logits (B, 10), penultimate features (B, features))."""
  features: int = 64

  @nn.compact
  def __call__(self, x):
    x = 2.0 * x - 1.0
    x = nn.swish(nn.Conv(32, (3, 3))(x))
    x = nn.swish(nn.Conv(32, (3, 3), strides=2)(x))
    x = nn.swish(nn.Conv(64, (3, 3), strides=2)(x))
    features = nn.swish(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(features), features


def digits_split(evaluation: bool) -> Tuple[np.ndarray, np.ndarray]:
  """(images float32 (N, 16, 16, 1) in [0, 1], labels int (N,)) of the training (1497) or held-out
  (300) digits, the split `datasets.digits_images` uses."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  labels = load_digits().target
  held_out = datasets.digits_held_out(labels.shape[0])
  images = datasets.digits_images(IMAGE_SHAPE[0], 1, evaluation=evaluation)
  return images.astype(np.float32) / 255.0, labels[held_out if evaluation else ~held_out]


def _shift(images: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
  """Each image moved by a random (dy, dx) in {-1, 0, 1}², zeros shifted in."""
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy, dx = rng.randint(0, 3, size=(2, images.shape[0]))
  return np.stack([p[y:y + IMAGE_SHAPE[0], x:x + IMAGE_SHAPE[1]]
                   for p, y, x in zip(padded, dy, dx)])


def train_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 64,
                     learning_rate: float = 1e-3):
  """Trains `DigitsClassifier` on the training digits.

  Returns:
    (variables, info): info holds the held-out `test_accuracy`, `train_accuracy` and the settings.
  """
  train_images, train_labels = digits_split(evaluation=False)
  model = DigitsClassifier()
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + IMAGE_SHAPE))
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(variables)

  @jax.jit
  def step(variables, opt_state, images, labels):
    def loss_fn(variables):
      logits, _ = model.apply(variables, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(variables, updates), opt_state, loss

  rng = np.random.RandomState(seed)
  for epoch in range(epochs):
    order = rng.permutation(train_images.shape[0])
    for start in range(0, order.size - batch_size + 1, batch_size):
      batch = order[start:start + batch_size]
      variables, opt_state, loss = step(variables, opt_state, _shift(train_images[batch], rng),
                                        train_labels[batch])
    logging.info("classifier epoch %d: loss %.4f", epoch + 1, float(loss))
  test_images, test_labels = digits_split(evaluation=True)
  info = dict(seed=seed, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
              train_accuracy=accuracy(variables, train_images, train_labels),
              test_accuracy=accuracy(variables, test_images, test_labels),
              num_train=int(train_images.shape[0]), num_test=int(test_images.shape[0]))
  return variables, info


_APPLY = jax.jit(lambda variables, images: DigitsClassifier().apply(variables, images))


def logits_and_features(variables, images, batch_size: int = 500):
  """(logits (N, 10), features (N, 64)) as float64 numpy for images (N, 16, 16, 1) in [0, 1]."""
  images = np.asarray(images, np.float32)
  if images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"The digits classifier takes {IMAGE_SHAPE} images, got {images.shape[1:]}.")
  parts = [_APPLY(variables, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
  return (np.concatenate([np.asarray(p[0], np.float64) for p in parts]),
          np.concatenate([np.asarray(p[1], np.float64) for p in parts]))


def accuracy(variables, images, labels) -> float:
  logits, _ = logits_and_features(variables, images)
  return float(np.mean(np.argmax(logits, axis=1) == labels))


class DigitsQuality:
  """Scores sample sets against the held-out digits with the classifier's features."""

  def __init__(self, variables):
    from evaluation import metrics  # pylint: disable=g-import-not-at-top
    self._metrics = metrics
    self.variables = variables
    reference, _ = digits_split(evaluation=True)
    _, features = logits_and_features(variables, reference)
    self.reference_mu, self.reference_sigma = metrics.mean_and_covariance(features)
    # KID's kernel (x·y / D + 1)³ was made for Inception features of order 1; these features are
    # larger, so both sets are divided by one scale fixed by the reference: its RMS entry.
    self.kernel_scale = float(np.sqrt(np.mean(np.square(features, dtype=np.float64))))
    self.reference_features = features / self.kernel_scale

  def __call__(self, images, requested_labels=None) -> Dict[str, object]:
    """images: (N, 16, 16, 1) in [0, 1] (clipped here). Returns the JSON-ready measures; with
    `requested_labels` (N,) (class-conditional samples) also `accuracy`, the share read as the
    requested class, and `per_class_accuracy`."""
    logits, features = logits_and_features(self.variables, np.clip(images, 0.0, 1.0))
    p = special.softmax(logits, axis=1)
    read = np.argmax(logits, axis=1)
    extra = {}
    if requested_labels is not None:
      requested = np.asarray(requested_labels).reshape(-1)
      extra = dict(accuracy=float(np.mean(read == requested)),
                   per_class_accuracy=[float(np.mean(read[requested == c] == c))
                                       if np.any(requested == c) else None
                                       for c in range(NUM_CLASSES)])
    return dict(**extra,
        frechet_distance=self._metrics.frechet_distance(
            *self._metrics.mean_and_covariance(features), self.reference_mu,
            self.reference_sigma),
        # KID (×10³, the usual scale): unbiased at any N, so sets of different sizes compare.
        kernel_distance=1e3 * self._metrics.unbiased_mmd2(self.reference_features,
                                                           features / self.kernel_scale),
        label_entropy=float(special.entr(p.mean(axis=0)).sum()),
        mean_image_entropy=float(special.entr(p).sum(axis=1).mean()),
        label_histogram=np.bincount(read, minlength=NUM_CLASSES).tolist())


def _info_path(weights_path: str) -> str:
  return os.path.splitext(weights_path)[0] + ".json"


def load_info(path: str = DEFAULT_WEIGHTS) -> dict:
  """How the weights at `path` were made: the `.json` beside them (accuracies, settings)."""
  with open(_info_path(path)) as f:
    return json.load(f)


def save_classifier(path: str, variables, info: dict) -> None:
  """Writes the weights (flax msgpack) and `<path without .msgpack>.json` with `info`."""
  with atomic_write(path) as f:
    f.write(serialization.to_bytes(variables))
  atomic_write_text(_info_path(path), json.dumps(info, indent=2) + "\n")


def load_classifier(path: str = DEFAULT_WEIGHTS):
  """The classifier's variables from `path`, with one clear error for a missing or bad file."""
  if not os.path.isfile(path):
    raise MissingFileError(f"Digits classifier weights {path!r} not found: they ship with the "
                            "repository (assets/); `python -m tools.train_digits_classifier` "
                            "retrains them.")
  template = DigitsClassifier().init(jax.random.PRNGKey(0), jnp.zeros((1,) + IMAGE_SHAPE))
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return serialization.from_bytes(template, raw)
  except Exception as e:  # msgpack and flax raise several types for bad input
    raise UserError(f"Digits classifier weights {path!r} ({len(raw)} bytes) are unreadable or "
                     f"do not fit DigitsClassifier: {type(e).__name__}: {e}") from e
