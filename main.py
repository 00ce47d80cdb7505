"""Entry point: `python main.py --config CONFIG --workdir WORKDIR --mode MODE`.

`--config` takes an ml_collections config file; any field can be overridden on the command line,
e.g. `--config.sampling.num_steps=100`. All output goes under `--workdir`.
"""
import difflib
import errno
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags

import run_lib
from configs import load_config_file
from tdas import settings as tdas_settings
from errors import UserError

MODES = run_lib.MODES

FLAGS = flags.FLAGS
# allow_override: the tests import this module in processes that also import the benchmarks and
# tools, whose flags share names (--config, --workdir); whichever module is imported last owns
# the name. As a program, main.py is the only module that defines them.
_OVERRIDABLE = dict(allow_override=True)
config_flags.DEFINE_config_file(
    "config", None, "Config file (e.g. configs/ve/ffhq_ncsnpp.py); override fields with "
    "--config.<field>=<value>.", lock_config=True, **_OVERRIDABLE)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints are read from "
                    "<workdir>/checkpoints/, results are written below it.", **_OVERRIDABLE)
flags.DEFINE_enum("mode", None, sorted(MODES), "What to run: " + "; ".join(
    f"{name}: {fn.__doc__.splitlines()[0]}" for name, fn in sorted(MODES.items())),
                  **_OVERRIDABLE)
flags.DEFINE_string("eval_folder", "eval", "Folder under --workdir for evaluation output.",
                    **_OVERRIDABLE)
flags.DEFINE_float("speedup", None, "Shorthand for --config.sampling.speedup=K "
                   "--config.sampling.num_steps=0: sample with round(model.num_scales / K) steps.",
                   **_OVERRIDABLE)
flags.DEFINE_bool("tdas", None, "Shorthand for --config.sampling.tdas.enabled=true (or false).",
                  **_OVERRIDABLE)
flags.DEFINE_bool("discard_rounds", False, "--mode sample: delete the round files in the eval "
                  "folder that were sampled with other settings, and sample them again (without "
                  "it, such rounds stop the run).", **_OVERRIDABLE)


def _argv_config_path(argv):
  for k, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and k + 1 < len(argv):
      return argv[k + 1]
  return None


def _dotted_names(config, prefix="") -> list:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, "items"):
      names.extend(_dotted_names(value, f"{prefix}{key}."))
  return names


def _flag_error_message(argv, error) -> str:
  """One line for a config file that does not load, or an override it cannot take."""
  path = _argv_config_path(argv)
  try:
    config = load_config_file(path)
  except Exception as load_error:  # pylint: disable=broad-except
    if isinstance(load_error, UserError):  # e.g. the folder a `FILE:ARG` config reads is missing
      return f"--config {path}: {load_error}"
    if isinstance(load_error, FileNotFoundError) or not os.path.isfile(str(path).split(":")[0]):
      return f"the config file {path!r} does not exist."
    return (f"the config file {path!r} cannot be loaded: {type(load_error).__name__}: "
            f"{' '.join(str(load_error).split())}")
  names = _dotted_names(config)
  for arg in argv:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0]
      if field not in names:
        close = difflib.get_close_matches(field, names, n=4, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"--config.{field}: the config {path} has no field {field!r}.{hint}"
  return f"a --config override cannot be applied: {' '.join(str(error).split())}"


def parse_flags(argv):
  """absl's flag parsing, with a config file that is missing or broken, or an override of a field
  the config lacks, reported in one line (exit 1) instead of a traceback."""
  try:
    remaining = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("model")  # a config file that failed to load raises here
    return remaining
  except flags.Error as error:  # a flag absl cannot parse, a required flag missing
    message = f"{' '.join(str(error).split())} (see --helpshort)"
  except Exception as error:  # pylint: disable=broad-except
    message = _flag_error_message(argv, error)
  sys.stderr.write(f"Error: {message}\n")
  sys.exit(1)


def command_line_fields(argv) -> list:
  """The dotted config fields that `argv` overrides (`--config.a.b=v` or `--config.a.b v`)."""
  return [arg[len("--config."):].split("=", 1)[0] for arg in argv
          if arg.startswith("--config.")]


def apply_shorthands(config):
  """The convenience flags only override config fields."""
  if FLAGS.speedup is not None:
    config.sampling.speedup = FLAGS.speedup
    config.sampling.num_steps = 0
  if FLAGS.tdas is not None:
    config.sampling.tdas.enabled = FLAGS.tdas
  return config


# What the machine, not the program, refuses: a full disk or quota, a read-only file system, a
# folder without write permission.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def environment_error_message(error: OSError, workdir: str) -> str:
  """One line for an OSError the machine raised while the run wrote or read a file."""
  where = f" at {error.filename!r}" if error.filename else ""
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    return (f"the disk is full{where} (under --workdir={workdir!r}): the files written before "
            "this one are complete and kept; free space and rerun the same command to go on.")
  return (f"{error.strerror or error}{where}: choose a --workdir this user can write "
          f"(now {workdir!r}), or fix its permissions.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir.strip():
    sys.exit("Error: --workdir is empty: name the directory the run reads and writes.")
  logging.info("mode=%s workdir=%s", FLAGS.mode, os.path.abspath(FLAGS.workdir))
  options = dict(eval_folder=FLAGS.eval_folder)
  if FLAGS.mode == "sample":
    options["discard_rounds"] = FLAGS.discard_rounds
  tdas_settings.set_command_line_fields(command_line_fields(sys.argv))
  try:
    MODES[FLAGS.mode](apply_shorthands(FLAGS.config), FLAGS.workdir, **options)
  except UserError as error:
    # A user's mistake (a missing file, a bad config value) gets its message, once, without a
    # traceback. Any other exception is a bug and keeps its traceback.
    sys.exit(f"Error: {error}")
  except OSError as error:
    if error.errno not in _ENVIRONMENT_ERRNOS:
      raise
    sys.exit(f"Error: {environment_error_message(error, FLAGS.workdir)}")
  finally:
    tdas_settings.set_command_line_fields(None)  # the record is this run's only


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir", "mode"])  # as a program only (tests import it)
  app.run(main, flags_parser=parse_flags)
