"""Fields this project adds to score_sde's configs, defined once and added to every config.

`add_project_fields(config)` is called by each `default_*_configs.get_default_configs()` (and by the
few released configs that, like score_sde's, do not build on a default). `PROJECT_FIELDS` lists the
dotted names of every leaf it adds, e.g. 'sampling.tdas.r1', 'calibrate.num_samples', 'data.path'.

The added fields live under the sections of `_DEFAULTS`: `sampling` (score_sde's section, extended),
`calibrate` (a new section: `--mode calibrate`), `data` (score_sde's section, two fields added),
`eval` (score_sde's section, extended: `--mode eval`, `--mode likelihood`) and `inpaint` (a new
section: `--mode inpaint` / `--mode colorize`).
A section the config lacks is created; in a section it has, only the project's leaves are set and
every score_sde field is kept.
"""
import ml_collections

# Nested defaults of the added fields; sub-dicts become ConfigDicts under `config.sampling`.
_SAMPLING_DEFAULTS = dict(
    num_steps=0,                   # sampler steps N'; 0 = model.num_scales
    speedup=1.0,                   # k: N' = round(N / k) when num_steps is 0
    speedup_rule='round',          # 'round' | 'truncate' (N' = int(N / k), as PDS's code)
    eps_scale_with_speedup=False,  # multiply the end time eps by k (TDAS paper code)
    seed=0,                        # PRNG seed of sampling
    checkpoint_step=0,             # which checkpoint_<n> to load; 0 = newest
    checkpoint_dir='',             # '' = <workdir>/checkpoints
    # 'highest' = exact float32 convolutions; 'default' lets GPUs use TF32 (about 2x faster,
    # ~1e-3 relative error against the released networks; benchmarks/results/).
    matmul_precision='highest',
    # With TDAS on, also sample the first batch without it (same seed): vanilla_vs_tdas.png.
    vanilla_comparison=True,
    # Also write every sample as one arr0_<N>x<H>x<W>x<C>.npz (`arr_0`, uint8 NHWC), the file
    # guided-diffusion's and EDM's evaluators read.
    export_arr0=False,
    # Multi-host (pods): jax.distributed.initialize when an address is set.
    distributed=dict(coordinator_address='', num_processes=0, process_id=-1),
    # Probability-flow ODE sampler (diffrax).
    ode=dict(solver='tsit5', rtol=1e-5, atol=1e-5),
    # The σ-schedule samplers (method euler, heun, edm, euler_ancestral, ddim, dpmpp_*):
    # num_steps σ intervals on a 'karras' (rho), 'sde' (the SDE's own grid) or 'logsnr' schedule.
    schedule='karras',
    karras_rho=7.0,
    eta=1.0,                       # euler_ancestral, dpmpp_2m_sde, dpmpp_3m_sde (0 = deterministic)
    s_noise=1.0,                   # scale of their added noise
    solver_type='midpoint',        # dpmpp_2m_sde: 'midpoint' | 'heun'
    ddim_eta=0.0,                  # ddim (VP / subVP): 0 = deterministic, 1 = DDPM-like
    # The ermongroup runners' annealed Langevin dynamics (method annealed_langevin): step_lr
    # (alpha_c = step_lr (sigma_c / sigma_L)^2), steps per level, levels used (0 = all), the
    # final denoising step (NCSNv2), what is returned ('final' | 'before_last_step', NCSN v1).
    langevin=dict(step_lr=6.2e-6, n_steps_each=5, num_levels=0, denoise=True, output='final',
                  clamp=True),
    # EDM's stochastic sampler (method edm, Karras et al. 2022 Algorithm 2).
    edm=dict(S_churn=0.0, S_tmin=0.0, S_tmax=float('inf'), S_noise=1.0),
    # Class-conditional sampling (sampling/guidance.py): score + scale · ∇ log p_t(y | x) from a
    # noise-conditional classifier; on when `labels` is set ('7', '0,1,2' or 'uniform').
    guidance=dict(labels='', scale=1.0, classifier='', checkpoint=''),
    # Target Distribution Aware Sampling: coloured noise in space and frequency.
    tdas=dict(
        enabled=False,
        preset='',
        transform='dct',           # 'dct' | 'dft'
        # Zoned frequency filter: identity when both lambdas are 1.
        r1=0.4, r2=0.455, lambda1=1.0, lambda2=1.0,
        use_frequency=True,
        use_space=True,
        apply_to='both',           # 'init' | 'noise' | 'both'
        space_file='',
        space_f='sqrt',
        space_alpha=1.0,
        filter_file='',
        # Start at x_T = m + sigma_max xi, m the data's mean image from space_file (the mean of
        # the VE prior p_T, which the standard prior N(0, sigma_max^2) drops).
        init_mean=False,
        # PDS (the authors' follow-up): precondition the PC drift and Langevin gradient by M M^T
        # too; its .npy masks (C, H, W raw statistics, tools/pds_masks.py) and their alpha.
        precondition_drift=False,
        pds_space_mask='',
        pds_freq_mask='',
        pds_alpha=5.0,
    ),
)


# `--mode calibrate` (calibrate_mode.run): TDAS's frequency filter fitted to the sampler's
# deviation at N' from the full-N reference (docs/numerics.md §6).
_CALIBRATE_DEFAULTS = dict(
    num_samples=200,     # images per set (the paper: 200)
    steps=0,             # target N'; 0 = from `speedup`, or the sampling's N' when that is 0 too
    speedup=0.0,         # N' = round(model.num_scales / speedup) when steps is 0
    transform='',        # 'dct' | 'dft'; '' = config.sampling.tdas.transform
    method='zones',      # 'zones' (least squares) | 'quantile' (the paper's rule) | 'radial' |
                         # 'pds' (PDS's masks from data.path's first num_samples images; no sampling)
    num_bins=16,         # radial bins of the profile and of the 'radial' filter
    quantiles=(0.25, 0.33),  # radius quantiles of the 'quantile' rule (Table 4's DFT radii)
    max_gain=10.0,       # gains are clipped to [1 / max_gain, max_gain]
    seed=0,              # PRNG seed of both sample sets (the reference is cached per seed)
    batch_size=0,        # images per sampler call; 0 = config.eval.batch_size
    data_stats_file='',  # optional `--mode stats` frequency file: adds the behaviour functions
)

# `config.data`: where `--mode stats` and `--mode train` read the data set from (datasets.py).
_DATA_DEFAULTS = dict(
    path='',             # an image folder (PNG/JPEG) or an .npz with `images` uint8 (N, H, W, C)
    tfds_data_dir='',    # prepared tfds data sets (cifar10, celeb_a, lsun/...); '' = $TFDS_DATA_DIR
                         # or ~/tensorflow_datasets. Never downloaded.
)

# `config.eval` (score_sde's section, extended): `--mode eval` (FID / KID / IS, frequency
# deviation) and the Inception statistics `--mode stats` writes.
_EVAL_DEFAULTS = dict(
    metric='inception',        # 'inception' (FID/KID/IS) | 'digits' (the digits demo's metric
                               # classifier: Fréchet distance, accuracy against requested labels)
    samples_path='',           # what --mode eval reads: '' = <workdir>/<eval_folder> (rounds);
                               # or a .npz (`samples` or `arr_0`, uint8 NHWC) or an image folder
    stats_file='',             # data's Inception statistics; '' = <workdir>/stats/<dataset>_<size>.npz
    frequency_stats_file='',   # .npz with `dct_amplitude` (H, W); '' = stats/frequency_<stem>.npz
    inception_weights='',      # pt_inception-2015-12-05-6726825d.pth or .npz; '' = env/default
    resize='clean',            # to 299 px: 'clean' (PIL bicubic) | 'tf_legacy' | 'pytorch_bilinear'
    input_scaling='',          # 'pytorch_fid' | 'tensorflow'; '' = the resize's tool (clean-fid: tf)
    inception_batch_size=64,   # images per Inception batch, split over all local devices
    kid_subsets=100,           # KID: subsets averaged
    kid_subset_size=1000,      # KID: images per subset (at most)
    is_splits=10,              # Inception Score splits
    frequency_bins=16,         # radial bins of the frequency deviation
    precision_recall_samples=0,  # > 0: precision/recall (k = 3) on up to this many images per set
    # Bits/dim (--mode likelihood, and --mode eval with score_sde's eval.enable_bpd) of the data
    # set's evaluation split, dequantised: the divergence ('hutchinson' | 'exact'), the probe
    # ('rademacher' | 'gaussian'), the ODE tolerances, how many images (0 = all), the batch
    # (0 = eval.batch_size).
    bpd_divergence='hutchinson',
    bpd_probe='rademacher',
    bpd_rtol=1e-5,
    bpd_atol=1e-5,
    bpd_num_images=0,
    bpd_batch_size=0,
)

# `--mode inpaint` / `--mode colorize` (controllable.py).
_INPAINT_DEFAULTS = dict(
    images='',       # .npz with `images` uint8 or an image folder; '' = the evaluation split
    mask='center',   # center | left_half | random_<p> | a mask file ((H, W) or (H, W, C), 1 = known)
    num_images=64,   # images to fill (the first of `images`)
    seed=0,          # PRNG seed (and of random_<p> masks)
)

# Every added section: its name and its defaults.
_DEFAULTS = dict(sampling=_SAMPLING_DEFAULTS, calibrate=_CALIBRATE_DEFAULTS, data=_DATA_DEFAULTS,
                 eval=_EVAL_DEFAULTS, inpaint=_INPAINT_DEFAULTS)


def _dotted_leaves(tree, prefix):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _dotted_leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


PROJECT_FIELDS = tuple(field for section, defaults in _DEFAULTS.items()
                       for field in _dotted_leaves(defaults, f'{section}.'))
# The sections the project adds or extends.
PROJECT_SECTIONS = tuple(_DEFAULTS)


def section_defaults(section: str) -> dict:
  """A copy of the defaults of one section (one of PROJECT_SECTIONS), as nested dicts."""
  import copy  # pylint: disable=g-import-not-at-top
  return copy.deepcopy(_DEFAULTS[section])


def add_project_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the project's fields (sampling, TDAS, calibration, data path), at their defaults, to
  `config` in place."""
  for section, defaults in _DEFAULTS.items():
    if section not in config:
      config[section] = ml_collections.ConfigDict()
    target = config[section]
    for key, value in defaults.items():
      target[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config


def section_with_defaults(config, section: str) -> ml_collections.ConfigDict:
  """`config.<section>` with the project's defaults filled in for fields a config lacks (a copy)."""
  settings = ml_collections.ConfigDict(section_defaults(section))
  if section in config:
    for key, value in config[section].items():
      settings[key] = value
  return settings
