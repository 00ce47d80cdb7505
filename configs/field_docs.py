"""What each field this project adds to the configs means: the source of docs/config_fields.md.

`FIELD_DOCS` maps a field, or a group of sibling fields written `section.{a,b,c}`, to one line of
Markdown. Every leaf of `configs.project_fields.PROJECT_FIELDS` must be covered by exactly one
key (tests/test_docs.py checks it). `EXTENDED_FIELDS` describes score_sde fields, or fields of
one config family, whose values this project extends. `python -m tools.config_reference` writes
the table, with each default read from the configs themselves.
"""

FIELD_DOCS = {
    'sampling.num_steps':
        'sampler steps N′ (0 = `model.num_scales`, unless `speedup` is set)',
    'sampling.speedup':
        'k: N′ = round(N / k) when `num_steps` is 0',
    'sampling.eps_scale_with_speedup':
        "multiply the sampler's end time eps by k, as the TDAS paper's code does",
    'sampling.seed':
        'PRNG seed for sampling. Round r uses fold_in(seed, r)',
    'sampling.checkpoint_dir':
        "checkpoint folder (`''` = `<workdir>/checkpoints`)",
    'sampling.checkpoint_step':
        'which checkpoint `n` to use (0 = newest)',
    'sampling.matmul_precision':
        ('`highest` = exact float32 on GPUs; `default` allows TF32 (about 2× faster, ~1e-3 '
         'relative error)'),
    'sampling.vanilla_comparison':
        'with TDAS on, also sample the first round without it and write `vanilla_vs_tdas.png`',
    'sampling.distributed.{coordinator_address,num_processes,process_id}':
        ('multi-host: `jax.distributed.initialize` when an address is set (`auto`: JAX finds a'
         " TPU pod's or Slurm job's coordinator). Each host writes its own "
         '`samples_<r>_host<k>.npz`'),
    'sampling.export_arr0':
        ('also write every sample as one `arr0_<N>x<H>x<W>x<C>.npz` (`arr_0`, uint8 NHWC) for '
         "guided-diffusion's / EDM's evaluators"),
    'sampling.ode.{solver,rtol,atol}':
        'probability-flow ODE sampler (diffrax; `tsit5`, `dopri5`, `bosh3`, `heun`)',
    'sampling.langevin.{step_lr,n_steps_each,num_levels,denoise,output,clamp}':
        ("`annealed_langevin`: the ermongroup runners' step_lr and steps per level, the levels"
         " kept (0 = all), NCSNv2's final denoising, what is returned (`final` or NCSN's "
         '`before_last_step`), the clamp to [0, 1]'),
    'sampling.{schedule,karras_rho}':
        'σ schedule of the σ-schedule methods: `karras`, `sde`, `logsnr`',
    'sampling.{eta,s_noise}':
        'noise of `euler_ancestral`, `dpmpp_2m_sde`, `dpmpp_3m_sde` (η = 0: deterministic)',
    'sampling.solver_type':
        '`dpmpp_2m_sde`: `midpoint` or `heun`',
    'sampling.ddim_eta':
        "`ddim`'s η",
    'sampling.edm.{S_churn,S_tmin,S_tmax,S_noise}':
        "`edm`'s churn (EDM Algorithm 2)",
    'sampling.tdas.enabled':
        'turn TDAS on',
    'sampling.tdas.preset':
        "one of the paper's reported settings, by name",
    'sampling.tdas.transform':
        '`dct` or `dft`',
    'sampling.tdas.{r1,r2,lambda1,lambda2}':
        'zoned frequency filter (lambdas of 1 = identity)',
    'sampling.tdas.{use_frequency,use_space}':
        'switch either filter off for ablations',
    'sampling.tdas.apply_to':
        'colour the `init` sample, the `noise`, or `both`',
    'sampling.tdas.{space_file,space_f,space_alpha}':
        "space filter from the data's mean image",
    'sampling.tdas.filter_file':
        'a filter `.npz` that overrides the numbers',
    'sampling.tdas.init_mean':
        'start at m + σ_max·ξ, m the mean image of `space_file`',
    'sampling.tdas.precondition_drift':
        'PDS: precondition the PC drift and Langevin gradient by M Mᵀ',
    'sampling.tdas.{pds_space_mask,pds_freq_mask,pds_alpha}':
        "PDS's `.npy` masks (C, H, W) and their softening",
    'sampling.guidance.labels':
        ("class-conditional sampling: `''` off, one class (`7`), a list cycled over the batch "
         '(`0,1,2`) or `uniform`'),
    'sampling.guidance.scale':
        'w of score + w ∇ₓ log p_t(y | x) (1 = score_sde; 0 = unguided)',
    'sampling.guidance.{classifier,checkpoint}':
        ("the noise-conditional classifier: `analytic` (the analytic mixture's exact posterior) "
         'and its weights'),
    'sampling.speedup_rule':
        '`round` (N′ = round(N / k)) or `truncate` (int(N / k), as PDS)',
    'calibrate.num_samples':
        'images per set (at least 16)',
    'calibrate.steps':
        "target N′ (0 = from `speedup`, else the sampling's N′)",
    'calibrate.speedup':
        "k: the target N′ = round(`model.num_scales` / k) when `steps` is 0",
    'calibrate.transform':
        "`dct`/`dft` (`''` = `sampling.tdas.transform`)",
    'calibrate.method':
        ("`zones` (least squares), `quantile` (the paper's rule), `radial` (one gain per bin),"
         " `pds` (PDS's masks from `data.path`, no sampling)"),
    'calibrate.{num_bins,quantiles,max_gain}':
        ("radial bins; the quantile rule's radius quantiles; gains clipped to [1/max_gain, "
         'max_gain]'),
    'calibrate.{seed,batch_size}':
        'seed of both sets; images per sampler call (0 = `eval.batch_size`)',
    'calibrate.data_stats_file':
        "a `--mode stats` frequency file: adds the paper's behaviour functions",
    'inpaint.{images,mask,num_images,seed}':
        ("`--mode inpaint` / `colorize`: the images (`''` = the evaluation split), the mask, "
         'how many, the seed'),
    'data.path':
        'image folder or `.npz` for `--mode stats` (and folder/npz training data)',
    'data.tfds_data_dir':
        ("where prepared tfds data sets live (`''` = `$TFDS_DATA_DIR` or "
         '`~/tensorflow_datasets`); never downloaded'),
    'eval.metric':
        ("`inception`: FID, KID, IS against the Inception statistics; `digits`: the digits "
         "demo's metric classifier (Fréchet distance to the held-out digits, label entropy, "
         "and the share read as the requested class of class-conditional samples)"),
    'eval.samples_path':
        ("what `--mode eval` reads (`''` = the `--eval_folder`'s rounds): an `arr_0` / "
         '`samples` `.npz` or a PNG / JPEG folder'),
    'eval.stats_file':
        "the data's Inception statistics (`''` = `<workdir>/stats/<dataset>_<size>.npz`)",
    'eval.frequency_stats_file':
        "`.npz` with `dct_amplitude` (`''` = `stats/frequency_<dataset>_<size>.npz`)",
    'eval.inception_weights':
        ("the FID Inception weights (`''` = `$TDAS_INCEPTION_WEIGHTS`, then the torch hub "
         'cache)'),
    'eval.{resize,input_scaling}':
        ("resize to 299 px (`clean`, `tf_legacy`, `pytorch_bilinear`); scaling (`''` = that of"
         " the resize's tool)"),
    'eval.inception_batch_size':
        'images per Inception batch, split over the local devices',
    'eval.{kid_subsets,kid_subset_size}':
        'KID: how many subsets are averaged, and the images per subset (at most)',
    'eval.is_splits':
        'Inception Score: the number of splits',
    'eval.frequency_bins':
        'radial bins of the frequency deviation',
    'eval.precision_recall_samples':
        '> 0: precision and recall (k = 3) on up to this many images per set',
    'eval.{bpd_divergence,bpd_probe,bpd_rtol,bpd_atol,bpd_num_images,bpd_batch_size}':
        ("bits/dim (`--mode likelihood`, `eval.enable_bpd`): the divergence, Hutchinson's "
         'probe, the ODE tolerances, how many images (0 = the whole split), the batch (0 = '
         '`eval.batch_size`)'),
}

EXTENDED_FIELDS = {
    'sampling.method':
        ('`pc`, `ode`, `euler`, `heun`, `edm`, `euler_ancestral`, `ddim`, `dpmpp_2m`, '
         '`dpmpp_2m_sde`, `dpmpp_3m_sde`, `annealed_langevin`'),
    'model.target_file':
        'analytic model only: a fitted Gaussian `.npz`',
}
