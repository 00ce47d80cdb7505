"""Converts a score_sde_pytorch checkpoint, or a `--mode train` checkpoint folder, into a
released-format (flax msgpack) checkpoint, once.

    python -m tools.convert_checkpoint --config configs/ve/ffhq_ncsnpp_continuous.py \
        --input checkpoint_48.pth --output runs/ffhq

reads `--input` without PyTorch (`checkpoints.load_score_sde_pytorch`), checks it against the
config's model, and writes `<output>/checkpoints/checkpoint_<step>` in the JAX release's layout:
`params_ema` (the EMA weights sampling uses), `model_state`, `step`, `ema_rate` (the EMA decay),
`lr` (the optimiser's learning rate, when stored) and `optimizer.target` (the raw training
weights) with `optimizer.state.step`. Adam moments and the RNG are not carried over. The file is
written atomically (temporary file, then rename), so `main.py --mode sample --workdir <output>`
and `checkpoints.load_score_sde` read it as they read a released checkpoint.

From a diffusers-format NCSN++ folder (a `google/ncsnpp-*` hub model, see docs/diffusers.md)

    python -m tools.convert_checkpoint --config configs/diffusers_ncsnpp.py:FOLDER --output runs/x

(`--input` defaults to the folder the config names) writes its weights as `params_ema` at step 0,
and beside the checkpoint `<output>/config.json` (the score_sde config derived from the folder,
with `sampling.checkpoint_dir` cleared) and `<output>/config.py`, which loads that JSON:
`main.py --config <output>/config.py --workdir <output>` samples the converted file.

From a `--mode train` folder (`<workdir>/checkpoints/checkpoint_<n>/`, orbax) only the EMA
weights, `model_state`, `step` and the config's `ema_rate` are written: a small file to ship for
sampling (this is how `assets/digits_ncsnpp/` was made).
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags

import errors
import checkpoints
import diffusers_io
from atomic_io import atomic_write_text
from errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file of the checkpoint's model (e.g. "
      "configs/ve/ffhq_ncsnpp_continuous.py); override fields with --config.<field>=<value>.",
      lock_config=True)
  flags.DEFINE_string("input", None, "score_sde_pytorch checkpoint (.pth, zip or legacy format), "
                      "a --mode train checkpoint folder (checkpoint_<n>/) or a diffusers NCSN++ "
                      "folder; default: the config's sampling.checkpoint_dir.")
  flags.DEFINE_string("output", None, "Work directory to write <output>/checkpoints/"
                      "checkpoint_<step> into.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint_<step> in the output.")


_CONFIG_LOADER = '''"""The config tools.convert_checkpoint derived from the diffusers model
{source}."""
import json
import os

import ml_collections


def get_config():
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
'''


def write_derived_config(config, output_dir: str, source: str) -> str:
  """Writes `config` as `<output_dir>/config.json` (checkpoint_dir cleared, so the converted
  checkpoint under <output_dir>/checkpoints is read) and the `config.py` that loads it."""
  settings = config.to_dict()
  settings["sampling"]["checkpoint_dir"] = ""
  settings["sampling"]["checkpoint_step"] = 0
  os.makedirs(output_dir, exist_ok=True)
  atomic_write_text(os.path.join(output_dir, "config.json"),
                    json.dumps(settings, indent=2, sort_keys=True) + "\n")
  path = os.path.join(output_dir, "config.py")
  atomic_write_text(path, _CONFIG_LOADER.format(source=source))
  return path


def _float_or_none(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def _pytorch_state(config, input_path: str) -> dict:
  """EMA and raw weights (and the stored EMA decay and learning rate) of a `.pth` file."""
  step = checkpoints.read_pytorch_state(input_path)["step"]
  imported = checkpoints.import_score_sde_pytorch(input_path, config, sources=("ema", "raw"))
  ema_variables, raw_variables = imported["ema"], imported["raw"]
  stored = imported["state"]
  state = {
      "step": step,
      "params_ema": ema_variables["params"],
      "model_state": {k: v for k, v in ema_variables.items() if k != "params"},
      "optimizer": {"target": raw_variables["params"], "state": {"step": step}},
  }
  ema_rate = _float_or_none(stored["ema"].get("decay"))
  if ema_rate is not None:
    state["ema_rate"] = ema_rate
  optimizer = stored.get("optimizer")
  groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
  if groups and isinstance(groups[0], dict) and _float_or_none(groups[0].get("lr")) is not None:
    state["lr"] = float(groups[0]["lr"])
  return state


def convert(config, input_path: str, output_dir: str, overwrite: bool = False) -> str:
  """Writes `input_path`'s weights as `<output_dir>/checkpoints/checkpoint_<step>`.

  Args:
    config: the config whose model the checkpoint holds.
    input_path: the score_sde_pytorch `.pth` file, a `--mode train` checkpoint folder, or a
      diffusers NCSN++ folder (then `config.json` and `config.py` are written beside
      `checkpoints/`); '' = the config's `sampling.checkpoint_dir`.
    output_dir: work directory of the converted checkpoint.
    overwrite: replace an existing file of the same step instead of refusing.
  Returns:
    The path written.
  """
  if not input_path:
    input_path = config.sampling.get("checkpoint_dir", "")
    if not input_path:
      raise UserError("Name the checkpoint to convert with --input (the config's "
                      "sampling.checkpoint_dir is empty).")
  if diffusers_io.is_diffusers_path(input_path):
    variables, step = checkpoints.load_diffusers(input_path, config)
    state = {"step": step, "params_ema": variables["params"], "model_state": {},
             "ema_rate": float(config.model.ema_rate)}
    target = checkpoints.write_released_checkpoint(state, output_dir, config, overwrite)
    config_file = write_derived_config(config, output_dir, os.path.abspath(input_path))
    logging.info("Converted %s to %s; its config: %s.", input_path, target, config_file)
    return target
  if checkpoints.is_orbax_checkpoint(input_path):
    state = checkpoints.released_state_from_trained(input_path, config)
  elif os.path.isdir(input_path):
    raise UserError(f"--input {input_path!r} is a directory but not a finished --mode train "
                     "checkpoint folder; pass the .pth file itself.")
  else:
    state = _pytorch_state(config, input_path)
  target = checkpoints.write_released_checkpoint(state, output_dir, config, overwrite)
  logging.info("Converted %s (step %d) to %s.", input_path, state["step"], target)
  return target


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  print(convert(FLAGS.config, FLAGS.input, FLAGS.output, overwrite=FLAGS.overwrite))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "output"])  # as a program only (tests import it)
  app.run(errors.report_user_errors(main))
