"""The ermongroup NCSN / NCSNv2 releases as configs: the values of each run's `.yml`.

`ermongroup_config(...)` builds one. The network is the ermongroup PyTorch one (`model.name`
'ermongroup_*', see models/ncsnv2.py); sampling is the runner's annealed Langevin dynamics
(`sampling.method = 'annealed_langevin'`, `sampling.langevin.*`); the noise levels are
`model.num_scales` (the .yml's num_classes) from `model.sigma_max` (sigma_begin) down to
`model.sigma_min` (sigma_end), geometric. The runners' checkpoints (`checkpoint.pth`,
`checkpoint_<step>.pth`) go in <workdir>/checkpoints/ or `sampling.checkpoint_dir`.
"""
from configs.default_cifar10_configs import get_default_configs


def ermongroup_config(*, network, dataset, image_size, channels, sigma_begin, sigma_end,
                      num_classes, ngf, step_lr, n_steps_each, denoise, output='final',
                      category='', random_flip=True, uniform_dequantization=False,
                      ema_rate=0.999, batch_size=128, n_iters=300001, lr=1e-4, eps=1e-8,
                      sampling_batch_size=100):
  """One release's config; the arguments are its `.yml` fields (data, model, sampling, optim)."""
  config = get_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = False  # the networks index their noise levels
  training.batch_size = batch_size
  training.n_iters = n_iters
  training.snapshot_freq = 5000

  data = config.data
  data.dataset = dataset
  if category:
    data.category = category
  data.image_size = image_size
  data.num_channels = channels
  data.centered = False  # the networks take [0, 1] and map it to 2x - 1 (logit_transform false)
  data.random_flip = random_flip
  data.uniform_dequantization = uniform_dequantization

  model = config.model
  model.name = network
  model.nf = ngf
  model.sigma_max = sigma_begin
  model.sigma_min = sigma_end
  model.num_scales = num_classes
  model.num_classes = num_classes
  model.scale_by_sigma = network != 'ermongroup_ncsn'  # NCSN v1 outputs the score itself
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.interpolation = 'bilinear'
  model.ema_rate = ema_rate

  sampling = config.sampling
  sampling.method = 'annealed_langevin'
  sampling.langevin.step_lr = step_lr
  sampling.langevin.n_steps_each = n_steps_each
  sampling.langevin.denoise = denoise
  sampling.langevin.output = output

  config.eval.batch_size = sampling_batch_size
  config.eval.num_samples = sampling_batch_size

  optim = config.optim
  optim.optimizer = 'Adam'
  optim.lr = lr
  optim.beta1 = 0.9
  optim.eps = eps
  optim.weight_decay = 0
  optim.warmup = 0
  optim.grad_clip = -1.
  return config
