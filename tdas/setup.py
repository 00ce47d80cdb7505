"""Turns `config.sampling.tdas` into the filter arrays the samplers take."""
from typing import Optional

import numpy as np

from tdas import filters as tdas_filters
from tdas.transforms import check_transform


def image_shape(config):
  """(H, W, C) of the config's images."""
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def build_filters(config, mean_image: Optional[np.ndarray] = None, loaded=None):
  """The TDAS filters for a sampler call: None when TDAS is off, else {'space', 'freq'}.

  Args:
    config: the run's config (reads `config.sampling.tdas` and the image shape).
    mean_image: (H, W, C) data mean in [0, 1] read from `tdas.space_file`, or None (A = 1).
    loaded: (space, freq, info) from `tdas.filter_file`, which overrides the numbers.
  Returns:
    None, or a dict whose `space` / `freq` are (H, W, C) float32 arrays, or None where that
    filter is switched off (`use_space` / `use_frequency`).
  """
  tdas = config.sampling.tdas
  if not tdas.enabled:
    return None
  transform = check_transform(tdas.transform)
  shape = image_shape(config)
  freq = space = None
  if tdas.use_frequency:
    if loaded is not None:
      freq = loaded[1]
    else:
      freq = tdas_filters.frequency_filter(shape, tdas.r1, tdas.r2, tdas.lambda1, tdas.lambda2,
                                           transform)
  if tdas.use_space:
    if loaded is not None:
      space = loaded[0]
    elif mean_image is not None:
      space = tdas_filters.space_filter(mean_image, tdas.space_f, tdas.space_alpha)
  return dict(space=space, freq=freq)


def describe(config, filters) -> dict:
  """JSON-ready summary of the TDAS settings of a run (for sampling.json)."""
  tdas = config.sampling.tdas
  if filters is None:
    return dict(enabled=False)
  summary = dict(enabled=True, transform=tdas.transform, apply_to=tdas.apply_to,
                 filter_file=tdas.filter_file, space_file=tdas.space_file,
                 frequency_filter=filters["freq"] is not None,
                 space_filter=filters["space"] is not None)
  if not tdas.filter_file:
    summary.update(r1=tdas.r1, r2=tdas.r2, lambda1=tdas.lambda1, lambda2=tdas.lambda2)
  if filters["space"] is not None and not tdas.filter_file:
    summary.update(space_f=tdas.space_f, space_alpha=tdas.space_alpha)
  return summary
