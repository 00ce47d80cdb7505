"""The diffusers folder format of the `google/ncsnpp-*` hub models, read without PyTorch.

A model folder holds `config.json` (a `UNet2DModel` config) and one weight file,
`diffusion_pytorch_model.safetensors` (read with the `safetensors` package's numpy reader) or
`diffusion_pytorch_model.bin` (a `torch.save` state dict, read with `pytorch_io`). The sampler's
settings are in `scheduler_config.json` (a `ScoreSdeVeScheduler` config). Two layouts exist:

    hub repo (flat)                    save_pretrained of the pipeline
    FOLDER/config.json                 FOLDER/unet/config.json
    FOLDER/diffusion_pytorch_model.*   FOLDER/unet/diffusion_pytorch_model.*
    FOLDER/scheduler_config.json       FOLDER/scheduler/scheduler_config.json

`model_folder(path)` takes either (or the `unet/` folder itself, or a weight file inside it);
`scheduler_config_file` looks beside the model's config, then in `../scheduler/`.

A hub id (`google/ncsnpp-ffhq-1024`) that is not a local folder is looked up in the local
Hugging Face cache, offline (`hub_snapshot`): with `huggingface_hub` when it is installed, else
by reading the cache's documented layout, `models--<owner>--<name>/refs/main` naming the
snapshot `models--<owner>--<name>/snapshots/<revision>/`. Nothing is ever downloaded.

Everything here is file I/O; translating a config and pairing tensor names is pure and lives in
`models/diffusers_ncsnpp.py`.
"""
import json
import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

from errors import MissingFileError, UserError

CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DiffusersFormatError(UserError):
  """A diffusers folder that cannot be read: a damaged config or weight file."""


def _has_model(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, CONFIG_NAME)) and any(
      os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_NAMES)


def is_diffusers_path(path: str) -> bool:
  """Whether `path` is a diffusers model folder (flat or with `unet/`) or a weight file in one."""
  path = str(path)
  if os.path.isfile(path):
    return (os.path.basename(path) in WEIGHT_NAMES
            and os.path.isfile(os.path.join(os.path.dirname(path), CONFIG_NAME)))
  return os.path.isdir(path) and (_has_model(path) or _has_model(os.path.join(path, "unet")))


def model_folder(path: str) -> Tuple[str, Optional[str]]:
  """(the folder holding the model's `config.json`, the weight file if `path` named one).

  Raises MissingFileError naming what is expected where when `path` is no diffusers model.
  """
  path = str(path)
  if os.path.isfile(path):
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) not in WEIGHT_NAMES:
      raise MissingFileError(f"{path!r} is not a diffusers weight file: expected one of "
                             f"{', '.join(WEIGHT_NAMES)} (or the folder holding it).")
    if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
      raise MissingFileError(f"{path!r} has no {CONFIG_NAME} beside it: a diffusers model "
                             "folder keeps the UNet2DModel config next to its weights.")
    return folder, os.path.abspath(path)
  if not os.path.isdir(path):
    raise MissingFileError(
        f"The diffusers folder {path!r} does not exist. Pass the folder of a google/ncsnpp-* "
        f"model: {CONFIG_NAME} and {WEIGHT_NAMES[0]} or {WEIGHT_NAMES[1]} (flat, as on the hub, "
        "or under unet/ as save_pretrained writes them).")
  for folder in (path, os.path.join(path, "unet")):
    if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
      if not any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_NAMES):
        raise MissingFileError(
            f"The diffusers folder {folder!r} has {CONFIG_NAME} but no weight file: expected "
            f"{WEIGHT_NAMES[0]} or {WEIGHT_NAMES[1]} beside it.")
      return os.path.abspath(folder), None
  raise MissingFileError(
      f"{path!r} holds no diffusers model: expected {CONFIG_NAME} with {WEIGHT_NAMES[0]} or "
      f"{WEIGHT_NAMES[1]} in it or in {os.path.join(path, 'unet')!r}.")


def weight_file(folder: str) -> str:
  """The model's weight file in `folder`: the `.safetensors` one when both exist (as diffusers
  prefers it)."""
  for name in WEIGHT_NAMES:
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      return candidate
  raise MissingFileError(f"No {WEIGHT_NAMES[0]} or {WEIGHT_NAMES[1]} in {folder!r}.")


def read_json(path: str, what: str) -> dict:
  """A JSON object from `path`, with one clear error for a missing or damaged file."""
  if not os.path.isfile(path):
    raise MissingFileError(f"The {what} {path!r} does not exist.")
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DiffusersFormatError(f"The {what} {path!r} is not readable JSON: {e}") from e
  if not isinstance(value, dict):
    raise DiffusersFormatError(f"The {what} {path!r} holds a {type(value).__name__}, not a JSON "
                               "object.")
  return value


def scheduler_config_file(folder: str) -> str:
  """`scheduler_config.json` beside the model's config (hub layout) or in `../scheduler/`."""
  candidates = (os.path.join(folder, SCHEDULER_CONFIG_NAME),
                os.path.join(os.path.dirname(folder), "scheduler", SCHEDULER_CONFIG_NAME))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise MissingFileError(
      f"No {SCHEDULER_CONFIG_NAME} for the diffusers model in {folder!r}: expected "
      f"{candidates[0]!r} (hub layout) or {candidates[1]!r} (save_pretrained layout). It gives "
      "sigma_min, sigma_max, num_train_timesteps and the corrector's snr.")


def read_configs(folder: str) -> Tuple[dict, dict, str]:
  """(the UNet2DModel config, the ScoreSdeVeScheduler config, the scheduler config's path)."""
  unet = read_json(os.path.join(folder, CONFIG_NAME), "diffusers model config")
  scheduler_file = scheduler_config_file(folder)
  scheduler = read_json(scheduler_file, "diffusers scheduler config")
  return unet, scheduler, scheduler_file


def read_weights(path: str) -> Dict[str, np.ndarray]:
  """{tensor name: numpy array} of a diffusers weight file, in the file's order.

  `.safetensors` goes through the safetensors package's numpy reader; `.bin` (a `torch.save`
  state dict, zip or legacy) through `pytorch_io`. Neither needs PyTorch.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"The diffusers weight file {path!r} does not exist.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types (and others) for bad input
      raise DiffusersFormatError(f"The weight file {path!r} is not a readable safetensors file "
                                 f"(truncated, damaged or another format?): "
                                 f"{type(e).__name__}: {e}") from e
  else:
    import pytorch_io  # pylint: disable=g-import-not-at-top
    tensors = pytorch_io.load(path)
    if not (isinstance(tensors, dict) and tensors
            and all(isinstance(v, np.ndarray) for v in tensors.values())):
      raise DiffusersFormatError(f"The weight file {path!r} does not hold a state dict (a dict "
                                 "of tensors), as diffusers' UNet2DModel saves.")
  return dict(tensors)


# ----------------------------------------------------------------------------------------------
# Hub ids, resolved in the local Hugging Face cache (never downloaded)


def looks_like_hub_id(text: str) -> bool:
  """`owner/name` with no more slashes: a hub id, unless a local path of that name exists."""
  return bool(_HUB_ID.match(text)) and not os.path.exists(text)


def hub_cache_dir() -> str:
  """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
  (read when called, so a changed environment counts)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.path.expanduser(os.environ["HF_HUB_CACHE"])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def _fetch_hint(repo_id: str) -> str:
  return (f"Fetch it once with `huggingface-cli download {repo_id}` (or `python -c \"import "
          f"huggingface_hub; huggingface_hub.snapshot_download('{repo_id}')\"`), or download the "
          "repo's files into a folder and pass that folder.")


def hub_snapshot(repo_id: str, revision: str = "main") -> str:
  """The local snapshot folder of hub model `repo_id` (offline; nothing is downloaded)."""
  cache = hub_cache_dir()
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    huggingface_hub = None
  if huggingface_hub is not None:
    try:
      return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                               local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError and friends: not in the cache
      raise MissingFileError(f"The hub model {repo_id!r} is not in the local Hugging Face cache "
                             f"{cache!r} ({type(e).__name__}). {_fetch_hint(repo_id)}") from e
  repo_folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  ref = os.path.join(repo_folder, "refs", revision)
  if os.path.isfile(ref):
    with open(ref) as f:
      revision = f.read().strip()
  snapshot = os.path.join(repo_folder, "snapshots", revision)
  if not os.path.isdir(snapshot):
    missing = snapshot if os.path.isdir(repo_folder) else repo_folder
    raise MissingFileError(f"The hub model {repo_id!r} is not in the local Hugging Face cache "
                           f"(no {missing!r}). {_fetch_hint(repo_id)}")
  return snapshot


def resolve(path_or_id: str) -> str:
  """A local path as given, or a hub id's cached snapshot folder."""
  text = str(path_or_id).strip()
  if not text:
    raise UserError("configs/diffusers_ncsnpp.py needs the model: "
                    "--config configs/diffusers_ncsnpp.py:FOLDER (a diffusers folder or a hub id "
                    "such as google/ncsnpp-ffhq-1024 in the local Hugging Face cache).")
  text = os.path.expanduser(text)
  if looks_like_hub_id(text):
    return hub_snapshot(text)
  return text
