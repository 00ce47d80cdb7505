"""Entry point: `python main.py --config CONFIG --workdir WORKDIR --mode MODE`.

`--config` takes an ml_collections config file; any field can be overridden on the command line,
e.g. `--config.sampling.num_steps=100`. All output goes under `--workdir`.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags

import run_lib

MODES = run_lib.MODES

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/ve/ffhq_ncsnpp.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints are read from "
                    "<workdir>/checkpoints/, results are written below it.")
flags.DEFINE_enum("mode", None, sorted(MODES), "What to run: " + "; ".join(
    f"{name}: {fn.__doc__.splitlines()[0]}" for name, fn in sorted(MODES.items())))
flags.DEFINE_string("eval_folder", "eval", "Folder under --workdir for evaluation output.")
flags.DEFINE_float("speedup", None, "Shorthand for --config.sampling.speedup=K "
                   "--config.sampling.num_steps=0: sample with round(model.num_scales / K) steps.")
flags.DEFINE_bool("tdas", None, "Shorthand for --config.sampling.tdas.enabled=true (or false).")
flags.mark_flags_as_required(["config", "workdir", "mode"])


def apply_shorthands(config):
  """The convenience flags only override config fields."""
  if FLAGS.speedup is not None:
    config.sampling.speedup = FLAGS.speedup
    config.sampling.num_steps = 0
  if FLAGS.tdas is not None:
    config.sampling.tdas.enabled = FLAGS.tdas
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.info("mode=%s workdir=%s", FLAGS.mode, os.path.abspath(FLAGS.workdir))
  try:
    MODES[FLAGS.mode](apply_shorthands(FLAGS.config), FLAGS.workdir,
                      eval_folder=FLAGS.eval_folder)
  except run_lib.USER_ERRORS as error:
    # A user's mistake (a missing file, a bad config value) gets its message, not a traceback.
    logging.error("%s", error)
    sys.exit(f"Error: {error}")


if __name__ == "__main__":
  app.run(main)
