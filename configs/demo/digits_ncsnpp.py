"""Demo: a small NCSN++ (continuous VE SDE) that this project trained on scikit-learn's digits.

    python main.py --config configs/demo/digits_ncsnpp.py --workdir runs/digits_demo --mode sample

samples from the EMA weights committed under `assets/digits_ncsnpp/checkpoints/` (one
score_sde-format msgpack file, so no training and no download are needed). The network is the
FFHQ/LSUN NCSN++ of `ve/ffhq_ncsnpp_continuous.py` (BigGAN blocks, FIR resampling, output/input
skips, Fourier features), shrunk to nf 16, two downsamplings and one residual block per
resolution: 0.32 M parameters. The data are the 1497 training digits (8x8, upsampled bicubically
to 16 px, grey, in [0, 1]); the 300 held-out digits are the reference of `benchmarks/learned_tdas`.

sigma_max = 10 exceeds the largest distance between two training images (9.0), score_sde's rule
for VE models; sigma_min = 0.01. N = model.num_scales = 200 PC steps (reverse diffusion + Langevin,
snr 0.16 as released) is the full-step sampler the benchmark accelerates 2x to 40x.
`--speedup 10 --tdas` samples 20 steps with the TDAS filter calibrated for that budget.

The shipped weights are step 10000 of the run below (batch 64, Adam 1e-3, EMA 0.999): 43 minutes
on 2 CPU cores, exported with `python -m tools.convert_checkpoint --config <this file> --input
<workdir>/checkpoints/checkpoint_5 --output assets/digits_ncsnpp`. To retrain and sample your
own weights:

    python main.py --config configs/demo/digits_ncsnpp.py --workdir runs/digits_train --mode train
    python main.py --config configs/demo/digits_ncsnpp.py --workdir runs/digits_train \
        --mode sample --config.sampling.checkpoint_dir=''
"""
import os

from configs.tiny import ncsnpp_ve_continuous

# The committed files, under assets/digits_ncsnpp/ at the repository's root: the EMA weights
# (checkpoints/checkpoint_<step>) and TDAS's filter calibrated for N' = 20 (--speedup 10).
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                       "assets", "digits_ncsnpp")


def get_config():
  # The tiny FFHQ-architecture NCSN++ (VE, continuous, PC sampler), resized and given digits.
  config = ncsnpp_ve_continuous.get_config()
  config.model.num_scales = 200

  training = config.training
  training.batch_size = 64
  training.n_iters = 10000
  training.snapshot_freq = 2000
  training.snapshot_freq_for_preemption = 500
  training.log_freq = 100
  training.eval_freq = 1000
  training.snapshot_sampling = True
  training.n_jitted_steps = 1   # on the CPU, more steps per call only unroll (losses.py)

  data = config.data
  data.dataset = 'DIGITS'
  data.num_channels = 1
  data.random_flip = False  # a mirrored digit is not a digit
  data.centered = False     # VE models see [0, 1]

  model = config.model
  model.nf = 16
  model.ch_mult = (1, 2, 2)
  model.sigma_max = 10
  model.sigma_min = 0.01
  model.dropout = 0.

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200

  sampling = config.sampling
  sampling.snr = 0.16
  sampling.checkpoint_dir = os.path.normpath(os.path.join(SHIPPED, "checkpoints"))
  # Off until --tdas: the frequency filter `--mode calibrate` fitted at N' = 20 against N = 200
  # (zones r1 0, r2 0.285, lambda1 0.391, lambda2 0.1; benchmarks/results/learned_tdas.json).
  # Calibrated for 20 steps: recalibrate for another budget.
  sampling.tdas.filter_file = os.path.normpath(os.path.join(SHIPPED, "tdas_filters_20.npz"))
  # Off until guidance.labels is set (e.g. --config.sampling.guidance.labels=7): the shipped
  # noise-conditional classifier of configs/demo/digits_classifier.py (docs/guidance.md).
  sampling.guidance.classifier = os.path.normpath(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "digits_classifier.py"))
  sampling.guidance.checkpoint = os.path.normpath(os.path.join(
      SHIPPED, os.pardir, "digits_classifier", "params.msgpack"))

  evaluate = config.eval
  evaluate.batch_size = 100
  evaluate.num_samples = 100
  # --mode eval measures with the digits metric classifier (evaluation/digits_classifier.py):
  # no Inception weights or statistics needed, and guided rounds get their accuracy.
  evaluate.metric = 'digits'
  return config
