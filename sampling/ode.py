"""Probability-flow ODE sampler with an adaptive diffrax solver; TDAS colours its initial sample.

dx/dt = f(x, t) - ½ g(t)² score(x, t), integrated from T down to eps over the whole batch at once
(one adaptive step size for the batch, as score_sde's RK45 sampler does on the flattened batch).
"""
import diffrax
import jax
import jax.numpy as jnp

from sampling.interface import SAMPLERS, SampleResult, Sampler, SamplerSetup, coloring_of
from sampling.noise import NoiseSource
from sampling.predictors import ReverseDiffusion
from errors import UserError

# name -> diffrax solver class.
SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}


@SAMPLERS.register("ode")
class ODESampler(Sampler):
  """Samples (B, H, W, C) by solving the probability-flow ODE.

  Args:
    setup: SDE, score-function builder, shape, eps and sharding (`SamplerSetup`).
    solver: a name in SOLVERS (`config.sampling.ode.solver`).
    rtol, atol: tolerances of the PID step-size controller.
    denoise: finish with one noiseless reverse-diffusion step at eps (`sampling.noise_removal`).
    max_steps: the solver gives up (an error) after this many steps.

  `sample(rng, variables, tdas)` returns SampleResult(samples, nfe) with nfe the number of score
  evaluations, counted as they run (every stage of accepted and rejected steps, the solver's
  first evaluation, and the denoising step): an adaptive solver's count is not a formula of its
  steps that one can trust across solvers. TDAS can only colour the initial sample here: the ODE
  adds no noise.
  """

  def __init__(self, setup: SamplerSetup, solver: str = "tsit5", rtol: float = 1e-5,
               atol: float = 1e-5, denoise: bool = True, max_steps: int = 4096):
    if solver not in SOLVERS:
      raise UserError(f"config.sampling.ode.solver={solver!r} must be one of {sorted(SOLVERS)}.")
    for name, value in (("rtol", rtol), ("atol", atol)):
      if not value > 0:
        raise UserError(f"config.sampling.ode.{name} must be positive, got {value!r}.")
    self.setup = setup
    self.sde = setup.sde
    self.shape = tuple(setup.shape)
    self.solver_cls = SOLVERS[solver]
    self.rtol, self.atol = rtol, atol
    self.denoise = denoise
    self.max_steps = max_steps
    self.solver = solver
    self._sample = jax.jit(self._sample_impl)

  def describe(self):
    return dict(solver=self.solver, rtol=self.rtol, atol=self.atol)

  @classmethod
  def from_config(cls, config, setup):
    ode = config.sampling.ode
    return cls(setup, solver=ode.solver, rtol=ode.rtol, atol=ode.atol,
               denoise=config.sampling.noise_removal)

  def sample(self, rng, variables, tdas=None) -> SampleResult:
    self._evaluations = 0
    x = self._sample(rng, variables, coloring_of(tdas))
    jax.block_until_ready(x)
    jax.effects_barrier()  # every evaluation's callback has run
    return SampleResult(x, self._evaluations)

  def _count_evaluation(self):
    self._evaluations += 1

  def _sample_impl(self, rng, variables, coloring):
    score_fn = self.setup.score_fn_builder(variables)
    ode = self.sde.reverse(score_fn, probability_flow=True)
    batch = self.shape[0]
    noise = NoiseSource.create(rng, self.shape, coloring, self.setup.batch_sharding)
    xi, noise = noise.draw("init")
    x = noise.constrain(self.sde.prior_from_noise(xi))

    def vector_field(t, x, args):
      del args
      jax.debug.callback(self._count_evaluation)  # one score evaluation (the NFE count)
      return ode.sde(x, jnp.full((batch,), t))[0]

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), self.solver_cls(), t0=self.sde.T, t1=self.setup.eps,
        dt0=None, y0=x, stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
        max_steps=self.max_steps, saveat=diffrax.SaveAt(t1=True))
    x = solution.ys[-1]
    if self.denoise:
      # One noiseless reverse-diffusion step at eps removes the remaining noise (score_sde).
      jax.debug.callback(self._count_evaluation)
      _, x, _ = ReverseDiffusion(self.sde, score_fn).update(
          x, jnp.full((batch,), self.setup.eps), _NoNoise(x))
    return x


class _NoNoise:
  """A noise source of zeros, for the noiseless final step (its noisy output is discarded)."""

  def __init__(self, like):
    self.like = like

  def draw(self, kind="step"):
    del kind
    return jnp.zeros_like(self.like), self

  def precondition(self, v):
    return v
