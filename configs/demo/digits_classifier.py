"""Demo: a noise-conditional classifier of scikit-learn's digits, for class-conditional sampling
with the digits NCSN++ (`configs/demo/digits_ncsnpp.py`).

The config is that score model's (same data: 16 px, grey, in [0, 1]; same VE SDE, sigma 0.01 to
10) plus a `classifier` section: score_sde's noise-conditional WideResNet
(`models/classifiers.py`) shrunk to one block per group and widths 32, 64, 128, conditioned on
log sigma through 32 Fourier features. `--mode train` with this config trains the classifier
(`train_classifier.py`): cross-entropy on x_0 + sigma(t) z for t ~ U(eps, 1), 1497 training
digits, the 300 held-out ones for the accuracy table <workdir>/classifier_accuracy.json.

    python main.py --config configs/demo/digits_classifier.py --workdir runs/digits_classifier \
        --mode train
    python -m tools.export_classifier --config configs/demo/digits_classifier.py \
        --workdir runs/digits_classifier --output assets/digits_classifier/params.msgpack

The second command writes the EMA params of the newest snapshot as the flax msgpack that
`models.classifiers.load_params` reads, i.e. what `sampling.guidance.checkpoint` names when
sampling the digits model with `sampling.guidance.classifier` set to this file.
"""
import ml_collections

from configs.demo import digits_ncsnpp


def get_config():
  config = digits_ncsnpp.get_config()

  training = config.training
  training.batch_size = 64
  training.n_iters = 3000
  training.snapshot_freq = 1000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_sampling = False  # nothing to sample: the score model is not trained here

  config.model.ema_rate = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup = 100

  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.name = 'wideresnet_noise_conditional'
  classifier.blocks_per_group = 1     # WRN depth 6 * 1 + 4 = 10
  classifier.channel_multiplier = 2   # group widths 32, 64, 128
  classifier.num_classes = 10
  classifier.embedding_size = 32      # Gaussian Fourier features of log sigma
  classifier.fourier_scale = 16.
  # Pixel mean and std of the 1497 training digits at 16 px in [0, 1] (datasets.digits_images).
  classifier.image_mean = (0.30987040,)
  classifier.image_std = (0.34771366,)
  return config
