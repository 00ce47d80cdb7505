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

# Each release's .yml values (and its runner's sampler), by config name.
RELEASES = {
    'ncsn_celeba': dict(
        network='ermongroup_ncsn', dataset='CELEBA', image_size=32, channels=3, sigma_begin=1,
        sigma_end=0.01, num_classes=10, ngf=128, step_lr=2e-05, n_steps_each=100, denoise=False,
        output='before_last_step', lr=0.001, n_iters=200001, sampling_batch_size=25),
    'ncsn_cifar10': dict(
        network='ermongroup_ncsn', dataset='CIFAR10', image_size=32, channels=3, sigma_begin=1,
        sigma_end=0.01, num_classes=10, ngf=128, step_lr=2e-05, n_steps_each=100, denoise=False,
        output='before_last_step', lr=0.001, n_iters=200001, sampling_batch_size=25),
    'ncsn_mnist': dict(
        network='ermongroup_ncsn', dataset='MNIST', image_size=28, channels=1, sigma_begin=1,
        sigma_end=0.01, num_classes=10, ngf=64, step_lr=2e-05, n_steps_each=100, denoise=False,
        output='before_last_step', lr=0.001, n_iters=200001, random_flip=False,
        sampling_batch_size=25),
    'ncsnv2_bedroom': dict(
        network='ermongroup_ncsnv2_deeper', dataset='LSUN', category='bedroom', image_size=128,
        channels=3, sigma_begin=190, sigma_end=0.01, num_classes=1086, ngf=128, step_lr=1.8e-06,
        n_steps_each=3, denoise=True, n_iters=150001, sampling_batch_size=36),
    'ncsnv2_celeba': dict(
        network='ermongroup_ncsnv2', dataset='CELEBA', image_size=64, channels=3, sigma_begin=90,
        sigma_end=0.01, num_classes=500, ngf=128, step_lr=3.3e-06, n_steps_each=5, denoise=True,
        n_iters=210001, sampling_batch_size=64),
    'ncsnv2_church': dict(
        network='ermongroup_ncsnv2_deeper', dataset='LSUN', category='church_outdoor',
        image_size=64, channels=3, sigma_begin=140, sigma_end=0.01, num_classes=788, ngf=128,
        step_lr=4.9e-06, n_steps_each=4, denoise=True, n_iters=200001, sampling_batch_size=96),
    'ncsnv2_cifar10': dict(
        network='ermongroup_ncsnv2', dataset='CIFAR10', image_size=32, channels=3, sigma_begin=50,
        sigma_end=0.01, num_classes=232, ngf=128, step_lr=6.2e-06, n_steps_each=5, denoise=True,
        n_iters=300001, sampling_batch_size=100),
    'ncsnv2_ffhq': dict(
        network='ermongroup_ncsnv2_deepest', dataset='FFHQ', image_size=256, channels=3,
        sigma_begin=348, sigma_end=0.01, num_classes=2311, ngf=128, step_lr=9e-07, n_steps_each=3,
        denoise=True, n_iters=80001, batch_size=32, eps=0.001, sampling_batch_size=36),
    'ncsnv2_tower': dict(
        network='ermongroup_ncsnv2_deeper', dataset='LSUN', category='tower', image_size=128,
        channels=3, sigma_begin=190, sigma_end=0.01, num_classes=1086, ngf=128, step_lr=1.8e-06,
        n_steps_each=3, denoise=True, n_iters=150001, sampling_batch_size=36),
}


def release_config(name: str):
  """The config of release `name` (a key of RELEASES)."""
  return ermongroup_config(**RELEASES[name])
