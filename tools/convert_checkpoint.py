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

From a `--mode train` folder (`<workdir>/checkpoints/checkpoint_<n>/`, orbax) only the EMA
weights, `model_state`, `step` and the config's `ema_rate` are written: a small file to ship for
sampling (this is how `assets/digits_ncsnpp/` was made).
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags

import errors
import checkpoints
from errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file of the checkpoint's model (e.g. "
    "configs/ve/ffhq_ncsnpp_continuous.py); override fields with --config.<field>=<value>.",
    lock_config=True)
flags.DEFINE_string("input", None, "score_sde_pytorch checkpoint (.pth, zip or legacy format) "
                    "or a --mode train checkpoint folder (checkpoint_<n>/).")
flags.DEFINE_string("output", None, "Work directory to write <output>/checkpoints/"
                    "checkpoint_<step> into.")
flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint_<step> in the output.")
flags.mark_flags_as_required(["config", "input", "output"])


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
    input_path: the score_sde_pytorch `.pth` file, or a `--mode train` checkpoint folder.
    output_dir: work directory of the converted checkpoint.
    overwrite: replace an existing file of the same step instead of refusing.
  Returns:
    The path written.
  """
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
  app.run(errors.report_user_errors(main))
