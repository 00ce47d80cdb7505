"""Turns `config.sampling.tdas` into the filter arrays the samplers take."""
from typing import Optional

import ml_collections
import numpy as np
from absl import logging

from tdas import filters as tdas_filters
from tdas import presets
from tdas.transforms import check_transform


def image_shape(config):
  """(H, W, C) of the config's images."""
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def effective_tdas(config) -> ml_collections.ConfigDict:
  """`config.sampling.tdas` with its preset applied (a copy; the config is not changed).

  A non-empty `tdas.preset` (a name in `tdas.presets.PRESETS`) sets transform, r1, r2, lambda1
  and lambda2; an unknown name is a ValueError listing the known ones. The sampler's transform
  (`run_lib.build_sampler`) and the filters both read this, so they always agree.
  """
  tdas = config.sampling.tdas
  name = tdas.get("preset", "")
  if not name:
    return tdas
  preset = presets.get_preset(name)
  if tdas.get("filter_file", ""):
    raise ValueError(f"config.sampling.tdas.preset={name!r} and config.sampling.tdas.filter_file="
                     f"{tdas.filter_file!r} both set the frequency filter; clear one of them.")
  resolved = ml_collections.ConfigDict(tdas.to_dict())
  resolved.update(preset.filter_fields())
  return resolved


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
  if not config.sampling.tdas.enabled:
    return None
  tdas = effective_tdas(config)
  transform = check_transform(tdas.transform)
  if tdas.get("preset", ""):
    logging.info("TDAS preset %s: transform %s, r1 %.3f, r2 %.3f, lambda1 %.3f, lambda2 %.3f.",
                 tdas.preset, transform, tdas.r1, tdas.r2, tdas.lambda1, tdas.lambda2)
  shape = image_shape(config)
  freq = space = None
  if loaded is not None:
    made_with = loaded[2].get("transform") if isinstance(loaded[2], dict) else None
    if made_with is not None and made_with != transform:
      raise ValueError(
          f"The TDAS filter file {tdas.filter_file!r} holds a {made_with.upper()} frequency filter "
          f"but config.sampling.tdas.transform={transform!r}; set the transform to {made_with!r}.")
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
  if filters is None:
    return dict(enabled=False)
  tdas = effective_tdas(config)
  summary = dict(enabled=True, preset=tdas.get("preset", ""), transform=tdas.transform,
                 apply_to=tdas.apply_to,
                 filter_file=tdas.filter_file, space_file=tdas.space_file,
                 frequency_filter=filters["freq"] is not None,
                 space_filter=filters["space"] is not None)
  if not tdas.filter_file:
    summary.update(r1=tdas.r1, r2=tdas.r2, lambda1=tdas.lambda1, lambda2=tdas.lambda2)
  if filters["space"] is not None and not tdas.filter_file:
    summary.update(space_f=tdas.space_f, space_alpha=tdas.space_alpha)
  return summary
