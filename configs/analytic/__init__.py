"""Configs of the analytic Gaussian benchmark (`model.name = 'analytic_gaussian'`).

The "network" is the exact score of a Gaussian target diffused by the SDE (models/analytic.py), so
these configs measure what a sampler and TDAS do without any learned-model error (or with the
controlled error of docs/numerics.md §7, `model.score_error`). They build on the LSUN/FFHQ-256 defaults,
so they carry every project field, and keep the FFHQ/LSUN VE sampler: continuous VE SDE,
sigma_min 0.01, 2000 noise scales, reverse-diffusion predictor + Langevin corrector.
`--config.training.sde=vpsde` (or `subvpsde`) switches to the VP family: beta_min/beta_max are
the score_sde defaults 0.1 / 20.

Target (FFHQ-like, data.centered = False, images in [0, 1]):
- power-law spectrum, variance of DCT coefficient (i, j) ∝ 1 / (sqrt(i² + j²) + f0)^alpha with
  alpha = 2 (the 1/f² power spectrum of natural images) and f0 = 1 (one frequency index: keeps the
  DC coefficient finite);
- RMS per-pixel std 0.27 (FFHQ's per-channel pixel std is about 0.25-0.30);
- mean image: per-channel (0.52, 0.43, 0.38) (roughly FFHQ's RGB means) plus a radial gradient
  0.1 brighter in the centre than in the corners (a face-like mean; it makes the TDAS space filter
  non-trivial). LSUN uses greyer means (0.47, 0.46, 0.44) and a weaker gradient 0.05.
The Gaussian is not confined to [0, 1]; that is intended (exact benchmark, no clipping).

Score error (off by default): gamma = 1 - e·rho^p below sigma_c, e 0.2, p 1, sigma_c 0.27 (the
target's per-pixel std), as in docs/numerics.md §7.
"""
from configs.default_lsun_configs import get_default_configs


def get_analytic_config(image_size, sigma_max, dataset='FFHQ', target_mean=(0.52, 0.43, 0.38),
                        target_mean_radial=0.1, snr=0.15):
  """The analytic Gaussian config at `image_size` px with VE `sigma_max`; see the module doc."""
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  # The released configs' Langevin snr: FFHQ-1024 0.15, LSUN/CelebA-HQ-256 0.075. (At snr 0.16
  # the corrector inflates the stiff high-frequency bands by ~2-3 % even at 2000 steps.)
  sampling.snr = snr

  evaluate = config.eval
  evaluate.batch_size = 16
  evaluate.num_samples = 64

  data = config.data
  data.dataset = f'analytic_gaussian_{dataset.lower()}'  # no files: samples by sample_target
  data.image_size = image_size
  data.num_channels = 3
  data.centered = False
  data.random_flip = False

  model = config.model
  model.name = 'analytic_gaussian'
  model.sigma_min = 0.01
  model.sigma_max = sigma_max
  model.num_scales = 2000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.ema_rate = 0.999      # read by training/checkpoint code; the model has no parameters
  model.nf = 0                # no network width; present for tools that read model.nf
  model.scale_by_sigma = False  # the output is already the score (VE) / -std·score (VP)
  # Target (models/analytic.py): an .npz with `mean` and `dct_variance` (--mode stats writes
  # one), or '' for the power-law target below.
  model.target_file = ''
  # Power-law target (models/analytic.py: power_law_target).
  model.power_law_alpha = 2.0
  model.power_law_f0 = 1.0
  model.target_std = 0.27
  model.target_mean = target_mean
  model.target_mean_radial = target_mean_radial
  # Score error of docs/numerics.md §7 (off: the exact score).
  model.score_error = False
  model.score_error_e = 0.2
  model.score_error_p = 1.0
  model.score_error_sigma_c = 0.27
  # > 0: the two-class mixture ½ N(mean - o, Sigma) + ½ N(mean + o, Sigma), o this many target
  # standard deviations in every DCT coefficient (class-conditional sampling's exact test).
  model.class_offset = 0.0
  return config
