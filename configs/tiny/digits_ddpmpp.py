"""Tiny DDPM++ on scikit-learn's handwritten digits (16 px, grey), continuous VP SDE: a real data
set that ships inside a registry package, so it trains on the CPU with no download.

    python main.py --config configs/tiny/digits_ddpmpp.py --workdir runs/digits --mode train
    python main.py --config configs/tiny/digits_ddpmpp.py --workdir runs/digits --mode sample

The network is `tiny/ddpmpp_vp_continuous.py`'s; the data are the 1797 8x8 digits upsampled to
16 px (see `datasets.py`), never flipped. The run lengths and the EMA rate are a CPU demo's.
"""
from configs.tiny import ddpmpp_vp_continuous


def get_config():
  config = ddpmpp_vp_continuous.get_config()

  data = config.data
  data.dataset = 'DIGITS'
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False  # a mirrored digit is not a digit
  data.centered = True

  training = config.training
  training.batch_size = 32
  training.n_iters = 2000      # ~3 min on 2 CPU cores; digits appear by ~500
  training.snapshot_freq = 500
  training.snapshot_freq_for_preemption = 250
  training.log_freq = 50
  training.eval_freq = 250
  training.snapshot_sampling = True
  training.n_jitted_steps = 5

  # A short run needs a short EMA: at 0.999 the average still holds ~20% of the initial weights
  # after 1500 steps, and that mixture samples noise.
  config.model.ema_rate = 0.99
  config.model.dropout = 0.0

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 100

  config.eval.batch_size = 4
  config.eval.num_samples = 64
  config.sampling.num_steps = 100
  return config
