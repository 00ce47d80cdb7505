"""Fields this project adds to score_sde's configs, defined once and added to every config.

`add_project_fields(config)` is called by each `default_*_configs.get_default_configs()` (and by the
few released configs that, like score_sde's, do not build on a default). `PROJECT_FIELDS` lists the
dotted names of every leaf it adds, e.g. 'sampling.tdas.r1'.
"""
import ml_collections

# Nested defaults of the added fields; sub-dicts become ConfigDicts under `config.sampling`.
_SAMPLING_DEFAULTS = dict(
    num_steps=0,                   # sampler steps N'; 0 = model.num_scales
    speedup=1.0,                   # k: N' = round(N / k) when num_steps is 0
    eps_scale_with_speedup=False,  # multiply the end time eps by k (TDAS paper code)
    seed=0,                        # PRNG seed of sampling
    checkpoint_step=0,             # which checkpoint_<n> to load; 0 = newest
    checkpoint_dir='',             # '' = <workdir>/checkpoints
    # 'highest' = exact float32 convolutions; 'default' lets GPUs use TF32 (about 2x faster,
    # ~1e-3 relative error against the released networks; benchmarks/results/).
    matmul_precision='highest',
    # With TDAS on, also sample the first batch without it (same seed): vanilla_vs_tdas.png.
    vanilla_comparison=True,
    # Multi-host (pods): jax.distributed.initialize when an address is set.
    distributed=dict(coordinator_address='', num_processes=0, process_id=-1),
    # Probability-flow ODE sampler (diffrax).
    ode=dict(solver='tsit5', rtol=1e-5, atol=1e-5),
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
    ),
)


def _dotted_leaves(tree, prefix):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _dotted_leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


PROJECT_FIELDS = tuple(_dotted_leaves(_SAMPLING_DEFAULTS, 'sampling.'))


def add_project_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the project's sampling and TDAS fields, at their defaults, to `config` in place."""
  if 'sampling' not in config:
    config.sampling = ml_collections.ConfigDict()
  sampling = config.sampling
  for key, value in _SAMPLING_DEFAULTS.items():
    sampling[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config
