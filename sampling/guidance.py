"""Class-conditional sampling with a noise-conditional classifier (`config.sampling.guidance`).

score_sde's rule (its `controllable_generation.get_pc_conditional_sampler`, Song et al. 2021
§5 and App. I.4): the sampler uses the score

    s(x, t) + w ∇ₓ log p_t(y | x),

with w = `guidance.scale` (1 is score_sde's and, with an exact classifier, samples p(x | y)
exactly) and p_t(y | x) a classifier that sees x at the marginal's noise std of time t (VE: σ(t);
VP, subVP: the std of `sde.marginal_prob`). It is applied where every method gets its score: the
score function the factory builds. PC then guides its predictor and corrector, and every
σ-schedule method sees the guided denoiser D + w σ² ∇ log p_t(y | x̃) through the denoiser view;
TDAS colours the same noise source as always. The classifier's gradient costs one classifier
forward and backward per score evaluation; NFE counts score evaluations only.

The sampler's `variables` argument is then `GuidedVariables(network, classifier, labels)`: the
score network's variables, the classifier's, and one label per sample (B,) int32.

Fields (`config.sampling.guidance`): `labels` ('' = off; one class for all, e.g. `7`; a list
`0,1,2` cycled over the batch; `uniform` = 0, 1, ..., K - 1 cycled, balanced), `scale` (w >= 0),
`classifier` (`analytic`: the exact posterior of the analytic two-class mixture target; else a
classifier config file) and `checkpoint` (the classifier's weights; read by the modes).
"""
import dataclasses
import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from errors import MissingFileError, UserError

ANALYTIC = "analytic"
UNIFORM = "uniform"


class GuidedVariables(NamedTuple):
  """The sampler's variables with guidance: `network` (the score model's), `classifier` (the
  classifier's), `labels` (B,) int32, the class each sample is drawn from, and optionally
  `scale`, a float32 scalar that replaces `guidance.scale` (an argument of the compiled program:
  a sweep over scales compiles once)."""
  network: Any
  classifier: Any
  labels: jax.Array
  scale: Any = None


@dataclasses.dataclass(frozen=True)
class Guidance:
  """What `config.sampling.guidance` resolves to.

  Attributes:
    labels: the requested classes, cycled over the batch (`labels_for`).
    scale: w.
    classifier: 'analytic' or the classifier config's path.
    checkpoint: the classifier's weights ('' for the analytic classifier).
    num_classes: K, the classifier's classes.
    logit_fn_builder: classifier variables -> logit_fn(x (B, H, W, C), noise_std (B,)) ->
      (B, K) logits; called inside the jitted program.
    classifier_config: the classifier config file's config (None for 'analytic').
  """
  labels: tuple
  scale: float
  classifier: str
  checkpoint: str
  num_classes: int
  logit_fn_builder: Callable[[Any], Callable]
  classifier_config: Any = None

  def labels_for(self, batch_size: int) -> np.ndarray:
    """(batch_size,) int32: the requested labels cycled over the batch (sample i gets
    labels[i mod len(labels)])."""
    return np.resize(np.asarray(self.labels, np.int32), (int(batch_size),))

  def describe(self) -> dict:
    """JSON-ready, for sampling.json and the round fingerprint."""
    return dict(classifier=self.classifier, checkpoint=self.checkpoint, scale=self.scale,
                labels=list(self.labels), num_classes=self.num_classes)


def parse_labels(value, num_classes: int) -> tuple:
  """The classes `guidance.labels` asks for: an int, a list or comma-separated string of ints, or
  'uniform' (every class once, 0 .. K - 1). Raises UserError naming the field."""
  if isinstance(value, str):
    text = value.strip()
    if text.lower() == UNIFORM:
      return tuple(range(num_classes))
    parts = [p for p in text.strip("[]()").split(",") if p.strip()]
  else:
    parts = list(value) if isinstance(value, (list, tuple)) else [value]
  try:
    labels = tuple(int(str(p).strip()) for p in parts)
  except ValueError:
    raise UserError(f"config.sampling.guidance.labels={value!r} must be a class index, a list of "
                    f"them, or 'uniform'.") from None
  if not labels:
    raise UserError("config.sampling.guidance.labels is empty.")
  bad = [y for y in labels if not 0 <= y < num_classes]
  if bad:
    raise UserError(f"config.sampling.guidance.labels={value!r}: {bad} out of range; the "
                    f"classifier has {num_classes} classes (0 .. {num_classes - 1}).")
  return labels


def enabled(config) -> bool:
  """Whether `config.sampling.guidance.labels` is set (guidance on)."""
  guidance = config.sampling.get("guidance")
  return guidance is not None and str(guidance.get("labels", "")).strip() != ""


def from_config(config) -> Optional[Guidance]:
  """The run's `Guidance`, or None when `sampling.guidance.labels` is empty."""
  if not enabled(config):
    return None
  fields = config.sampling.guidance
  scale = float(fields.scale)
  if not np.isfinite(scale) or scale < 0:
    raise UserError(f"config.sampling.guidance.scale={fields.scale!r} must be >= 0 (1 = score_sde;"
                    " 0 = unguided).")
  classifier = str(fields.classifier).strip()
  if classifier == ANALYTIC:
    from models import analytic  # pylint: disable=g-import-not-at-top
    if config.model.name != "analytic_gaussian":
      raise UserError("config.sampling.guidance.classifier='analytic' is the exact classifier of "
                      "the analytic mixture target; it needs config.model.name="
                      f"'analytic_gaussian', not {config.model.name!r}.")
    if not float(config.model.get("class_offset", 0.0)) > 0:
      raise UserError("config.sampling.guidance.classifier='analytic' needs the two-class "
                      "mixture target: set config.model.class_offset > 0.")
    module = analytic.AnalyticMixtureClassifier(config=config)
    num_classes = module.num_classes

    def logit_fn_builder(variables):
      return lambda x, noise_std: module.apply(variables, x, noise_std)
    classifier_config = None
  elif not classifier:
    raise UserError("config.sampling.guidance.labels is set but guidance.classifier is empty: "
                    "name the classifier's config file (or 'analytic' for the analytic mixture).")
  else:
    classifier_config = _classifier_config(classifier, config)
    from models import classifiers  # pylint: disable=g-import-not-at-top
    module = classifiers.create_classifier(classifier_config)
    num_classes = int(classifier_config.classifier.num_classes)

    def logit_fn_builder(params):
      return classifiers.logit_fn(classifier_config, module, params)
  return Guidance(labels=parse_labels(fields.labels, num_classes), scale=scale,
                  classifier=classifier, checkpoint=str(fields.get("checkpoint", "")),
                  num_classes=num_classes, logit_fn_builder=logit_fn_builder,
                  classifier_config=classifier_config)


def _classifier_config(path: str, config):
  """The classifier config file's config, checked against the score model's images."""
  from configs import load_config_file  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path.split(":", 1)[0]):
    raise MissingFileError(f"config.sampling.guidance.classifier={path!r}: no such config file "
                           "(a classifier config, e.g. configs/ve/cifar10_classifier.py).")
  classifier_config = load_config_file(path)
  if "classifier" not in classifier_config:
    raise UserError(f"config.sampling.guidance.classifier={path!r} has no `classifier` section: "
                    "it is not a classifier config.")
  for section, field in (("data", "image_size"), ("data", "num_channels"), ("data", "centered"),
                         ("training", "sde")):
    theirs, ours = classifier_config[section][field], config[section][field]
    if str(theirs).lower() != str(ours).lower():
      raise UserError(f"The classifier of config.sampling.guidance.classifier={path!r} takes "
                      f"{section}.{field}={theirs!r}, but the score model's is {ours!r}: it "
                      "would see other images or other noise levels than it was trained on.")
  return classifier_config


def classifier_log_likelihood_grad(logit_fn, x, noise_std, labels):
  """∇ₓ log p_t(y | x) (B, H, W, C): the gradient of the summed log-softmax of each sample's
  label (samples are independent, so the sum's gradient is each sample's own)."""

  def log_likelihood(x):
    log_probs = jax.nn.log_softmax(logit_fn(x, noise_std), axis=-1)
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  return jax.grad(log_likelihood)(x)


def guided_score_fn(score_fn, logit_fn, sde, labels, scale):
  """score_fn(x, t) + scale · ∇ₓ log p_t(labels | x), the classifier at the marginal's noise std
  of t under `sde`.

  Args:
    score_fn: (x (B, H, W, C), t (B,)[, rng]) -> score.
    logit_fn: (x, noise_std (B,)) -> (B, K) logits.
    sde: the sampler's SDE (its `marginal_prob` gives the std).
    labels: (B,) int32.
    scale: w, a float or a traced scalar.
  """
  labels = jnp.asarray(labels, jnp.int32)

  def guided(x, t, *args, **kwargs):
    noise_std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    gradient = classifier_log_likelihood_grad(logit_fn, x, noise_std, labels)
    return score_fn(x, t, *args, **kwargs) + scale * gradient

  return guided


def check_variables(variables):
  """Raises UserError unless `variables` is a `GuidedVariables` (a guided sampler was given the
  bare network variables)."""
  if not isinstance(variables, GuidedVariables):
    raise UserError("Guidance is on (config.sampling.guidance.labels is set): the sampler takes "
                    "sampling.guidance.GuidedVariables(network, classifier, labels).")
