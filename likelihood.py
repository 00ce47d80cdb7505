"""Bits/dim of data under a score model, through the probability-flow ODE (score_sde's
`likelihood.py`, Song et al. 2021 App. D.2).

The ODE dx/dt = f(x, t) - ½ g(t)² score(x, t) is integrated from eps to T together with
d(log p)/dt = div f̃(x, t) (instantaneous change of variables), so that

    log p_eps(x) = log p_T(x_T) + ∫_eps^T div f̃(x_t, t) dt,

with p_T the SDE's prior. The divergence is exact (the trace of the Jacobian, one JVP per pixel:
small images and tests) or Hutchinson's estimate eᵀ J e with one fixed probe e per sample for the
whole solve (Gaussian or Rademacher, seeded). Bits/dim = −log p / (D ln 2) + offset, D the
number of pixels × channels and offset = 8 − log2(the model-space width of [0, 1]): the bits of
the [0, 256) pixel scale, 7 for centred data, 8 otherwise (score_sde's `7 − inverse_scaler(−1)`).
Images are dequantised uniformly first, (k + u) / 256 with u ~ U[0, 1), as score_sde evaluates.
"""
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm
from errors import UserError

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")


class LikelihoodResult(NamedTuple):
  bpd: jax.Array     # (B,) bits/dim
  latent: jax.Array  # (B, H, W, C), x_T: the prior latent of each image
  nfe: int           # drift evaluations of the solve (each one network call, or one per pixel
                     # with the exact divergence)


def dequantize(images_uint8, rng) -> jax.Array:
  """(k + u) / 256 in [0, 1), u ~ U[0, 1): uint8 (B, H, W, C) -> float32."""
  noise = jax.random.uniform(rng, images_uint8.shape)
  return (jnp.asarray(images_uint8, jnp.float32) + noise) / 256.0


def bits_offset(centered: bool) -> float:
  """8 − log2(width of [0, 1] in model space): 7 for data in [−1, 1], 8 for [0, 1]."""
  return 8.0 - (1.0 if centered else 0.0)


class Likelihood:
  """Bits/dim of batches (B, H, W, C) in model space under `sde` and a score function.

  Args:
    sde: the model's SDE (its prior gives log p_T).
    score_fn_builder: variables -> score_fn(x, t), as `SamplerSetup.score_fn_builder`.
    shape: (B, H, W, C).
    divergence: 'exact' or 'hutchinson'; probe: 'gaussian' or 'rademacher' (Hutchinson).
    rtol, atol: tolerances of the adaptive solver (diffrax Tsit5, PID controller).
    eps: the start time (score_sde: 1e-5).
    centered: whether model space is [−1, 1] (`data.centered`), for the bits offset.
  """

  def __init__(self, sde, score_fn_builder, shape, divergence: str = "hutchinson",
               probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
               eps: float = 1e-5, centered: bool = False, max_steps: int = 16384):
    if divergence not in DIVERGENCES:
      raise UserError(f"config.eval.bpd_divergence={divergence!r} must be one of "
                       f"{DIVERGENCES}.")
    if probe not in PROBES:
      raise UserError(f"config.eval.bpd_probe={probe!r} must be one of {PROBES}.")
    for name, value in (("rtol", rtol), ("atol", atol)):
      if not value > 0:
        raise UserError(f"config.eval.bpd_{name}={value!r} must be positive.")
    self.sde, self.score_fn_builder, self.shape = sde, score_fn_builder, tuple(shape)
    self.divergence, self.probe = divergence, probe
    self.rtol, self.atol, self.eps = float(rtol), float(atol), float(eps)
    self.centered, self.max_steps = centered, int(max_steps)
    self._evaluations = 0
    self._solve = jax.jit(self._solve_impl)

  def __call__(self, rng, variables, x) -> LikelihoodResult:
    """Bits/dim of x (B, H, W, C) in model space (already dequantised); `rng` draws the
    Hutchinson probes."""
    self._evaluations = 0
    bpd, latent = self._solve(rng, variables, x)
    jax.block_until_ready(bpd)
    jax.effects_barrier()  # every evaluation's count has arrived
    return LikelihoodResult(bpd, latent, self._evaluations)

  def _count(self):
    self._evaluations += 1

  def _solve_impl(self, rng, variables, x):
    ode = self.sde.reverse(self.score_fn_builder(variables), probability_flow=True)
    batch = x.shape[0]
    dims = int(np.prod(x.shape[1:]))

    def drift(x, t):
      return ode.sde(x, jnp.full((batch,), t))[0]

    if self.divergence == "exact":
      basis = jnp.eye(dims, dtype=x.dtype).reshape((dims,) + x.shape[1:])

      def divergence(x, t):
        # tr J = Σ_i (J e_i)_i, one JVP per pixel (the samples do not interact).
        def column(e):
          tangent = jnp.broadcast_to(e, x.shape)
          return jax.jvp(lambda y: drift(y, t), (x,), (tangent,))[1]
        columns = jax.lax.map(column, basis)  # (D, B, H, W, C)
        diagonal = jnp.einsum("dbk,dk->b", columns.reshape(dims, batch, dims),
                              basis.reshape(dims, dims))
        return drift(x, t), diagonal
    else:
      if self.probe == "gaussian":
        probe = jax.random.normal(rng, x.shape)
      else:
        probe = jax.random.rademacher(rng, x.shape).astype(x.dtype)

      def divergence(x, t):
        # Hutchinson: E[eᵀ J e] = tr J, with the one probe e of this solve.
        value, jvp = jax.jvp(lambda y: drift(y, t), (x,), (probe,))
        return value, jnp.sum((jvp * probe).reshape(batch, -1), axis=1)

    def vector_field(t, state, args):
      del args
      jax.debug.callback(self._count)  # one drift evaluation (exact: plus its D JVPs)
      dx, div = divergence(state[0], t)
      return dx, div

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=self.eps, t1=self.sde.T, dt0=None,
        y0=(x, jnp.zeros((batch,), x.dtype)),
        stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
        max_steps=self.max_steps, saveat=diffrax.SaveAt(t1=True))
    latent, delta_logp = solution.ys[0][-1], solution.ys[1][-1]
    log_p = self.sde.prior_logp(latent) + delta_logp  # nats, (B,)
    bpd = -log_p / (dims * np.log(2.0)) + bits_offset(self.centered)
    return bpd, latent


def from_config(config, sde, score_fn_builder, shape) -> Likelihood:
  """The `Likelihood` of `config.eval.bpd_*` (divergence, probe, rtol, atol)."""
  evaluate = config.eval
  return Likelihood(sde, score_fn_builder, shape,
                    divergence=str(evaluate.get("bpd_divergence", "hutchinson")),
                    probe=str(evaluate.get("bpd_probe", "rademacher")),
                    rtol=float(evaluate.get("bpd_rtol", 1e-5)),
                    atol=float(evaluate.get("bpd_atol", 1e-5)),
                    centered=bool(config.data.centered))


def data_bits_per_dim(solver: Likelihood, variables, batches, scaler, seed: int = 0,
                      max_images: int = 0) -> dict:
  """Bits/dim of dequantised batches in [0, 1] (B, H, W, C): their mean, std and count.

  A last batch smaller than the solver's is padded with copies of its first image, and only its
  own rows are counted.
  """
  values, nfe, rng = [], 0, jax.random.PRNGKey(seed)
  progress = tqdm(desc="bits/dim", unit="image", total=max_images or None)
  for batch in batches:
    batch = np.asarray(batch, np.float32)
    if max_images:
      batch = batch[:max_images - len(values)]
    count = len(batch)
    if count == 0:
      break
    if count < solver.shape[0]:
      batch = np.concatenate([batch, np.repeat(batch[:1], solver.shape[0] - count, axis=0)])
    rng, probe_rng = jax.random.split(rng)
    result = solver(probe_rng, variables, jnp.asarray(scaler(batch)))
    values.extend(np.asarray(result.bpd)[:count].tolist())
    nfe += result.nfe
    progress.update(count)
    logging.log_every_n_seconds(logging.INFO, "bits/dim of %d images: %.4f so far", 30,
                                len(values), float(np.mean(values)))
    if max_images and len(values) >= max_images:
      break
  progress.close()
  if not values:
    raise UserError("No images to evaluate bits/dim on: the data set is empty.")
  values = np.asarray(values, np.float64)
  return dict(mean=float(values.mean()), std=float(values.std()), num_images=int(len(values)),
              nfe=int(nfe), nfe_per_batch=float(nfe) / max(1, -(-len(values) // solver.shape[0])),
              divergence=solver.divergence, probe=solver.probe if solver.divergence ==
              "hutchinson" else None, rtol=solver.rtol, atol=solver.atol, eps=solver.eps)
