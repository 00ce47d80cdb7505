"""Samplers (docs/numerics.md §5): `factory.build(config, shape)` makes the one `config.sampling.method`
names, every method implements `interface.Sampler`, and every draw comes from `noise.NoiseSource`.
The PC sampler (with its predictors and correctors) and the probability-flow ODE sampler live
here; new methods are one registered class each."""
