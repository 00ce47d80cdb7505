"""Correctors: Langevin steps at a fixed time t (docs/numerics.md §5).

Noise comes only from the `sampling.noise.NoiseSource` passed in (one draw per corrector step,
standard or TDAS-coloured); the step size uses the norm of the noise actually added. Norms are
per-sample L2 norms averaged over the whole batch (across every device: the arrays are global).
The per-sample norms are gathered to every device before they are averaged, so the sum runs in
one order whatever the split: one process with 4 devices and two with 2 give the same bits.
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

import sde_lib
from sampling.registry import Registry

CORRECTORS = Registry("corrector", "config.sampling.corrector")


def _batch_mean_norm(v, sharding=None):
  """Mean over the batch of the per-sample L2 norms of v (B, ...); `sharding`, the batch's
  NamedSharding (or None), is where the (B,) norms are gathered from before the mean."""
  norms = jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)
  if sharding is not None:
    norms = jax.lax.with_sharding_constraint(norms, NamedSharding(sharding.mesh, PartitionSpec()))
  return jnp.mean(norms)


class Corrector:
  """Base class: `n_steps` Langevin-type steps at time t."""

  def __init__(self, sde, score_fn, snr: float, n_steps: int):
    self.sde = sde
    self.score_fn = score_fn
    self.snr = snr
    self.n_steps = int(n_steps)

  @property
  def evaluations(self):
    return self.n_steps

  def _alpha(self, t):
    """alpha_i of the VP schedule (1 for VE), shape (B,)."""
    if isinstance(self.sde, sde_lib.VPSDE):  # VP and subVP
      return self.sde.alphas[self.sde.step_index(t)]
    return jnp.ones_like(t)

  def preconditioned(self, grad, noise):
    """The gradient the step uses (PDS preconditions Langevin's, not ALD's)."""
    del noise
    return grad

  def step_size(self, x, t, grad, z, sharding=None):
    raise NotImplementedError

  def update(self, x, t, noise):
    """Returns (x, x_mean, noise) after n_steps steps, one draw from `noise` per step."""
    def one_step(j, carry):
      del j
      x, _, noise = carry
      grad = self.preconditioned(self.score_fn(x, t), noise)
      z, noise = noise.draw()
      step = self.step_size(x, t, grad, z, getattr(noise, "sharding", None))
      x_mean = x + sde_lib.per_sample(step, x) * grad
      return x_mean + sde_lib.per_sample(jnp.sqrt(2.0 * step), x) * z, x_mean, noise

    return jax.lax.fori_loop(0, self.n_steps, one_step, (x, x, noise))


@CORRECTORS.register("langevin")
class LangevinCorrector(Corrector):
  """eps = 2 alpha (snr ‖z‖ / ‖score‖)², with batch-averaged norms (PDS: of D·score and M z)."""

  def preconditioned(self, grad, noise):
    return noise.precondition(grad)

  def step_size(self, x, t, grad, z, sharding=None):
    ratio = self.snr * _batch_mean_norm(z, sharding) / _batch_mean_norm(grad, sharding)
    return 2.0 * self._alpha(t) * ratio ** 2


@CORRECTORS.register("ald")
class AnnealedLangevinDynamics(Corrector):
  """Annealed Langevin dynamics of NCSN: eps = 2 alpha (snr std(t))²."""

  def step_size(self, x, t, grad, z, sharding=None):
    del sharding
    std = self.sde.marginal_prob(x, t)[1]
    return 2.0 * self._alpha(t) * (self.snr * std) ** 2


@CORRECTORS.register("none")
class NoCorrector(Corrector):
  """No correction."""

  @property
  def evaluations(self):
    return 0

  def update(self, x, t, noise):
    # Skip the draws a corrector would make, so that the predictor's noise at each step is the
    # same draw whether or not the run corrects.
    return x, x, noise.skip(self.n_steps)
