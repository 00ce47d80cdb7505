"""TDAS's settings, resolved once: `resolve(config)` turns `config.sampling.tdas` (its preset, its
filter file, its space file) into one frozen `TDAS` object.

That object is what the samplers (`sampler.sample(rng, variables, tdas)`), `--mode calibrate`,
`sampling.json` (`describe`) and the vanilla comparison (`without_filters`) take. The jitted
samplers see only its `coloring()`: the filter arrays and the static transform / `apply_to`.
"""
import dataclasses
from typing import Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from tdas import files
from tdas import filters as tdas_filters
from tdas import presets
from tdas.noise import APPLY_TO, Coloring
from tdas.transforms import check_transform
from errors import UserError


def image_shape(config) -> Tuple[int, int, int]:
  """(H, W, C) of the config's images."""
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


@dataclasses.dataclass(frozen=True, eq=False)
class TDAS:
  """TDAS for one run.

  Attributes:
    enabled: whether the sampler colours its noise (False: vanilla; the filters are None).
    transform: 'dct' or 'dft', the transform the frequency filter is indexed by.
    apply_to: which draws are coloured: 'init', 'noise' or 'both'.
    space: the space filter A (H, W, C) float32, or None (off).
    freq: the frequency filter R (H, W, C) float32, or None (off).
    preset, filter_file, space_file: where the filters came from ('' = not used).
    zones: (r1, r2, lambda1, lambda2) of a zoned frequency filter from the config or a preset.
    space_map: (space_f, space_alpha) of a space filter made from `space_file`.
    init_mean: the data's mean image (H, W, C) in model space, added to the initial sample
      (`tdas.init_mean`), or None.
    precondition_drift: PDS: the PC drift and Langevin gradient are preconditioned by M Mᵀ too.
    pds_masks: (space mask file, frequency mask file, alpha) when the filters are PDS's masks.
    filter_steps: the N' a `--mode calibrate` filter file was fitted for (0 = unknown / none).
  """
  enabled: bool = False
  transform: str = "dct"
  apply_to: str = "both"
  space: Optional[np.ndarray] = None
  freq: Optional[np.ndarray] = None
  preset: str = ""
  filter_file: str = ""
  space_file: str = ""
  zones: Optional[Tuple[float, float, float, float]] = None
  space_map: Optional[Tuple[str, float]] = None
  init_mean: Optional[np.ndarray] = None
  precondition_drift: bool = False
  pds_masks: Optional[Tuple[str, str, float]] = None
  filter_steps: int = 0

  def __post_init__(self):
    check_transform(self.transform)
    if self.apply_to not in APPLY_TO:
      raise UserError(f"config.sampling.tdas.apply_to={self.apply_to!r} must be one of "
                       f"{APPLY_TO}.")

  @classmethod
  def from_arrays(cls, space=None, freq=None, transform: str = "dct", apply_to: str = "both",
                  precondition_drift: bool = False):
    """TDAS on, with filters given as arrays (H, W, C) (benchmarks, tests)."""
    return cls(enabled=True, transform=transform, apply_to=apply_to, space=space, freq=freq,
               precondition_drift=precondition_drift)

  def coloring(self) -> Optional[Coloring]:
    """The part the jitted samplers see; None when TDAS is off."""
    if not self.enabled:
      return None
    return Coloring(space=self.space, freq=self.freq, init_mean=self.init_mean,
                    transform=self.transform, apply_to=self.apply_to,
                    precondition=self.precondition_drift)

  def without_filters(self) -> "TDAS":
    """The same run's vanilla sampler (TDAS off): the vanilla comparison."""
    return dataclasses.replace(self, enabled=False, space=None, freq=None, init_mean=None)

  def device_put(self, sharding) -> "TDAS":
    """The filters placed with `sharding` (e.g. replicated over the sampling mesh)."""
    if not self.enabled:
      return self
    put = lambda a: None if a is None else jax.device_put(a, sharding)
    return dataclasses.replace(self, space=put(self.space), freq=put(self.freq),
                               init_mean=put(self.init_mean))

  def describe(self) -> dict:
    """JSON-ready summary of the settings (for sampling.json)."""
    if not self.enabled:
      return dict(enabled=False)
    summary = dict(enabled=True, preset=self.preset, transform=self.transform,
                   apply_to=self.apply_to, filter_file=self.filter_file,
                   space_file=self.space_file, frequency_filter=self.freq is not None,
                   space_filter=self.space is not None)
    if self.zones is not None:
      summary.update(zip(("r1", "r2", "lambda1", "lambda2"), self.zones))
    if self.space_map is not None:
      summary.update(zip(("space_f", "space_alpha"), self.space_map))
    if self.init_mean is not None:
      summary["init_mean"] = True
    if self.precondition_drift:
      summary["precondition_drift"] = True
    if self.pds_masks is not None:
      summary.update(zip(("pds_space_mask", "pds_freq_mask", "pds_alpha"), self.pds_masks))
    return summary


def effective_fields(config) -> ml_collections.ConfigDict:
  """`config.sampling.tdas` with its preset applied (a copy; the config is not changed).

  A non-empty `tdas.preset` (a name in `tdas.presets.PRESETS`) sets transform, r1, r2, lambda1
  and lambda2; an unknown name is a ValueError listing the known ones.
  """
  tdas = config.sampling.tdas
  name = tdas.get("preset", "")
  if not name:
    return tdas
  preset = presets.get_preset(name)
  if tdas.get("filter_file", ""):
    raise UserError(f"config.sampling.tdas.preset={name!r} and config.sampling.tdas.filter_file="
                     f"{tdas.filter_file!r} both set the frequency filter; clear one of them.")
  resolved = ml_collections.ConfigDict(tdas.to_dict())
  resolved.update(preset.filter_fields())
  return resolved


def space_filter(config) -> Optional[np.ndarray]:
  """The space filter A (H, W, C) made from `tdas.space_file` with `space_f` / `space_alpha`, or
  None when `use_space` is off or no space file is set."""
  tdas = config.sampling.tdas
  if not (tdas.use_space and tdas.space_file):
    return None
  mean_image = files.read_mean_image(tdas.space_file, image_shape(config))
  return tdas_filters.space_filter(mean_image, tdas.space_f, tdas.space_alpha)


def for_calibration(config) -> TDAS:
  """The TDAS that `--mode calibrate` fits a frequency filter for: the config's transform (after
  its preset) and space filter, with no frequency filter yet (the filter file is not read)."""
  target = config.copy_and_resolve_references()
  with target.unlocked():
    target.sampling.tdas.enabled = True
    target.sampling.tdas.use_frequency = False
    target.sampling.tdas.filter_file = ""
  return resolve(target)


# The config fields the user set on the command line (`--config.<field>=...`), or None when the
# config comes from Python (then every TDAS-only field set with TDAS off is warned about).
_command_line_fields: Optional[frozenset] = None


def set_command_line_fields(fields) -> None:
  """Records which config fields the command line set (main.py), for `resolve`'s warnings."""
  global _command_line_fields
  _command_line_fields = None if fields is None else frozenset(fields)


def resolve(config) -> TDAS:
  """The run's TDAS settings from `config.sampling.tdas` (reads its filter and space files).

  Off (`enabled` False): only the transform and `apply_to` are resolved, nothing is read. On: the
  frequency filter comes from `filter_file` if set, else from the zones (r1, r2, lambda1, lambda2,
  after the preset); the space filter from `filter_file` if set, else from `space_file`. Each is
  None where `use_frequency` / `use_space` is off.
  """
  tdas = effective_fields(config)
  transform = check_transform(tdas.transform)
  if not tdas.enabled:
    unused = [name for name in ("filter_file", "pds_space_mask", "pds_freq_mask")
              if tdas.get(name, "")] + (["precondition_drift"]
                                        if tdas.get("precondition_drift", False) else [])
    if _command_line_fields is not None:
      # A config's own filter file with TDAS off is a vanilla run, not a mistake: only what the
      # user set on the command line is worth a warning.
      unused = [name for name in unused
                if f"sampling.tdas.{name}" in _command_line_fields]
    if unused:
      logging.warning("config.sampling.tdas.%s is set but TDAS is off, so the sampler is vanilla: "
                      "pass --tdas (config.sampling.tdas.enabled=True) to use it.",
                      ", ".join(unused))
    return TDAS(enabled=False, transform=transform, apply_to=tdas.apply_to)
  if tdas.get("preset", ""):
    logging.info("TDAS preset %s: transform %s, r1 %.3f, r2 %.3f, lambda1 %.3f, lambda2 %.3f.",
                 tdas.preset, transform, tdas.r1, tdas.r2, tdas.lambda1, tdas.lambda2)
  shape = image_shape(config)
  space = freq = zones = space_map = pds_masks = None
  filter_steps = 0
  if tdas.get("pds_space_mask", "") or tdas.get("pds_freq_mask", ""):
    if tdas.filter_file:
      raise UserError("config.sampling.tdas.filter_file and the PDS masks "
                       "(config.sampling.tdas.pds_*_mask) both set the filters; clear one.")
    if transform != "dft" and tdas.get("pds_freq_mask", ""):
      raise UserError("PDS's frequency mask is indexed by DFT frequency: set "
                       "config.sampling.tdas.transform='dft'.")
    alpha = float(tdas.pds_alpha)
    for name in ("pds_space_mask", "pds_freq_mask"):
      path = tdas.get(name, "")
      if path:
        mask = tdas_filters.pds_filter(
            files.read_pds_mask(path, f"config.sampling.tdas.{name}", shape), alpha)
        if name == "pds_space_mask" and tdas.use_space:
          space = mask
        elif name == "pds_freq_mask" and tdas.use_frequency:
          freq = mask
    pds_masks = (tdas.get("pds_space_mask", ""), tdas.get("pds_freq_mask", ""), alpha)
  elif tdas.filter_file:
    file_space, file_freq, info = files.load_filters(tdas.filter_file, shape)
    made_with = info.get("transform") if isinstance(info, dict) else None
    if made_with is not None and made_with != transform:
      raise UserError(
          f"The TDAS filter file {tdas.filter_file!r} holds a {made_with.upper()} frequency filter "
          f"but config.sampling.tdas.transform={transform!r}; set the transform to {made_with!r}.")
    freq = file_freq if tdas.use_frequency else None
    space = file_space if tdas.use_space else None
    if isinstance(info, dict) and info.get("steps"):
      filter_steps = int(info["steps"])
  else:
    zones = (tdas.r1, tdas.r2, tdas.lambda1, tdas.lambda2)
    if tdas.use_frequency:
      freq = tdas_filters.frequency_filter(shape, *zones, transform)
    space = space_filter(config)
    if space is not None:
      space_map = (tdas.space_f, tdas.space_alpha)
  init_mean = None
  if tdas.get("init_mean", False):
    if not tdas.space_file:
      raise UserError("config.sampling.tdas.init_mean=True needs the data's mean image: set "
                       "config.sampling.tdas.space_file (made by --mode stats).")
    mean = files.read_mean_image(tdas.space_file, shape)
    init_mean = (2.0 * mean - 1.0 if config.data.centered else mean).astype(np.float32)
  return TDAS(enabled=True, transform=transform, apply_to=tdas.apply_to, space=space, freq=freq,
              preset=tdas.get("preset", ""), filter_file=tdas.filter_file,
              space_file=tdas.space_file, zones=zones, space_map=space_map, init_mean=init_mean,
              precondition_drift=bool(tdas.get("precondition_drift", False)),
              pds_masks=pds_masks, filter_steps=filter_steps)
