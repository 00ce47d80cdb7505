"""A diffusers-format NCSN++ (the `google/ncsnpp-*` hub models), used as it is.

    python main.py --config configs/diffusers_ncsnpp.py:FOLDER --workdir runs/x --mode sample

FOLDER is the model folder (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`, with
`scheduler_config.json` beside it or in `../scheduler/`), a `save_pretrained` pipeline folder
(`unet/`, `scheduler/`), one weight file inside a model folder, or a hub id such as
`google/ncsnpp-ffhq-1024` already in the local Hugging Face cache (see docs/diffusers.md).

The config is score_sde's NCSN++ / continuous VE SDE that computes the same network
(`models.diffusers_ncsnpp.score_sde_fields`): architecture from `config.json`, sigma_min,
sigma_max, num_scales, the corrector's snr and steps from the scheduler config, and
`sampling.checkpoint_dir` pointing at the folder. Every other field (sampler, TDAS, calibration,
evaluation) keeps the 256 px score_sde defaults (`default_lsun_configs`), and any
`--config.<field>=<value>` override applies on top.
"""
import os

import diffusers_io
from configs.default_lsun_configs import get_default_configs
from models import diffusers_ncsnpp

# Data set names for the hub models' folders (file names of statistics; `--mode stats` and
# `--mode train` read data through them).
_DATASETS = (("ffhq", dict(dataset="FFHQ")), ("celebahq", dict(dataset="CelebAHQ")),
             ("church", dict(dataset="LSUN", category="church_outdoor")),
             ("bedroom", dict(dataset="LSUN", category="bedroom")))


def _dataset_fields(name: str) -> dict:
  name = name.lower()
  for key, fields in _DATASETS:
    if key in name:
      return fields
  return {}


def get_config(folder: str = ""):
  """The score_sde config of the diffusers NCSN++ at `folder` (a path or a cached hub id)."""
  location = diffusers_io.resolve(folder)
  model_folder, weight_file = diffusers_io.model_folder(location)
  unet, scheduler, scheduler_file = diffusers_io.read_configs(model_folder)
  fields = diffusers_ncsnpp.score_sde_fields(
      unet, scheduler, source=os.path.join(model_folder, diffusers_io.CONFIG_NAME),
      scheduler_source=scheduler_file)

  config = get_default_configs()
  for dotted, value in fields.items():
    section, name = dotted.split(".")
    if name in config[section]:  # the defaults' type may differ (sigma_max 378 is an int)
      del config[section][name]
    config[section][name] = value
  # What the name of the folder or hub id tells about the data (ffhq, celebahq, church, bedroom).
  for name, value in _dataset_fields(f"{folder} {location}").items():
    config.data[name] = value
  # The hub weights are already the EMA weights; the rate matters only to `--mode train`
  # (score_sde's value for its 256 px NCSN++ models).
  config.model.ema_rate = 0.999
  config.sampling.checkpoint_dir = weight_file or model_folder
  return config
