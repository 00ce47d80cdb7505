"""Probability-flow ODE sampler with an adaptive diffrax solver; TDAS colours its initial sample.

dx/dt = f(x, t) - ½ g(t)² score(x, t), integrated from T down to eps over the whole batch at once
(one adaptive step size for the batch, as score_sde's RK45 sampler does on the flattened batch).
"""
from typing import Any, Callable, Optional, Tuple

import diffrax
import jax
import jax.numpy as jnp

from sampling.pc import TDASSettings
from sampling.predictors import ReverseDiffusion
from tdas import noise as tdas_noise

# name -> (solver class, new vector-field evaluations per step; FSAL solvers reuse one stage).
SOLVERS = {
    "tsit5": (diffrax.Tsit5, 6),
    "dopri5": (diffrax.Dopri5, 6),
    "bosh3": (diffrax.Bosh3, 3),
    "heun": (diffrax.Heun, 2),
}


class ODESampler:
  """Samples (B, H, W, C) by solving the probability-flow ODE.

  Args:
    sde, score_fn_builder, shape, eps, denoise, tdas, batch_sharding: as `sampling.pc.PCSampler`
      (TDAS can only colour the initial sample here: the ODE adds no noise).
    solver: a name in SOLVERS (`config.sampling.ode.solver`).
    rtol, atol: tolerances of the PID step-size controller.
    max_steps: the solver gives up (an error) after this many steps.

  `sample(rng, variables, filters)` returns (samples, nfe) with nfe the number of score
  evaluations (solver stages per step times steps, plus the initial one and the denoising step).
  """

  def __init__(self, sde, score_fn_builder: Callable[[Any], Callable], shape: Tuple[int, ...],
               solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
               denoise: bool = True, tdas: Optional[TDASSettings] = None, batch_sharding=None,
               max_steps: int = 4096):
    if solver not in SOLVERS:
      raise ValueError(f"config.sampling.ode.solver={solver!r} must be one of {sorted(SOLVERS)}.")
    for name, value in (("rtol", rtol), ("atol", atol)):
      if not value > 0:
        raise ValueError(f"config.sampling.ode.{name} must be positive, got {value!r}.")
    self.sde = sde
    self.score_fn_builder = score_fn_builder
    self.shape = tuple(shape)
    self.solver_cls, self.evaluations_per_step = SOLVERS[solver]
    self.rtol, self.atol = rtol, atol
    self.eps = eps
    self.denoise = denoise
    self.tdas = tdas or TDASSettings()
    self.batch_sharding = batch_sharding
    self.max_steps = max_steps
    self.sample = jax.jit(self._sample)

  def _sample(self, rng, variables, filters=None):
    score_fn = self.score_fn_builder(variables)
    ode = self.sde.reverse(score_fn, probability_flow=True)
    batch = self.shape[0]
    xi = jax.random.normal(jax.random.fold_in(rng, 0), self.shape)
    if filters is not None and self.tdas.apply_to in ("init", "both"):
      xi = tdas_noise.color(xi, filters.get("space"), filters.get("freq"), self.tdas.transform)
    x = self.sde.prior_from_noise(xi)
    if self.batch_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, self.batch_sharding)

    def vector_field(t, x, args):
      del args
      return ode.sde(x, jnp.full((batch,), t))[0]

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), self.solver_cls(), t0=self.sde.T, t1=self.eps, dt0=None,
        y0=x, stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
        max_steps=self.max_steps, saveat=diffrax.SaveAt(t1=True))
    x = solution.ys[-1]
    nfe = solution.stats["num_steps"] * self.evaluations_per_step + 1
    if self.denoise:
      # One noiseless reverse-diffusion step at eps removes the remaining noise (score_sde).
      _, x = ReverseDiffusion(self.sde, score_fn).update(
          x, jnp.full((batch,), self.eps), lambda: jnp.zeros_like(x))
      nfe = nfe + 1
    return x, nfe
