"""Exports a classifier trained with `--mode train` (`train_classifier.py`) as a params file.

    python -m tools.export_classifier --config configs/demo/digits_classifier.py \
        --workdir runs/digits_classifier --output assets/digits_classifier/params.msgpack

reads the EMA params of the newest snapshot, <workdir>/checkpoints/checkpoint_<n>/ (or of
checkpoint_<--step>), checks them against the config's classifier and writes them as a flax
msgpack of the params dict: the format of score_sde's released classifier, which
`models.classifiers.load_params` (and so `sampling.guidance.checkpoint`) reads. The file appears
whole or not at all (`atomic_io`).
"""
import json
import os

import numpy as np
from absl import app
from absl import flags
from flax import serialization, traverse_util
from ml_collections.config_flags import config_flags

import checkpoints
import errors
from atomic_io import atomic_write
from errors import UserError
from models import classifiers

FLAGS = flags.FLAGS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  config_flags.DEFINE_config_file(
      "config", None, "The classifier config the run was trained with (e.g. "
      "configs/demo/digits_classifier.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's work directory (holding "
                      "checkpoints/checkpoint_<n>/).")
  flags.DEFINE_string("output", None, "The params file to write (.msgpack).")
  flags.DEFINE_integer("step", 0, "Which snapshot checkpoint_<n> to export; 0 = the newest.")


def export(config, workdir: str, output: str, step: int = 0) -> dict:
  """Writes the EMA params of `workdir`'s snapshot (newest, or checkpoint_<step>) to `output`.

  Returns {output, checkpoint, step, bytes, num_params}. A snapshot that does not fit the
  config's classifier raises UserError naming the first differing leaf.
  """
  if "classifier" not in config:
    raise UserError("tools.export_classifier needs a classifier config (one with a `classifier` "
                    "section, e.g. configs/demo/digits_classifier.py).")
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f"{folder!r} does not exist: train the classifier first "
                                  f"(main.py --mode train --workdir {workdir}).")
  path = checkpoints.find_checkpoint(folder, step or None)
  if not checkpoints.is_orbax_checkpoint(path):
    raise UserError(f"{path!r} is not a `--mode train` checkpoint folder.")
  variables, trained_step = checkpoints.load_trained(path)
  params = _host_params(variables["params"])
  expected = classifiers.param_shapes(config)
  actual = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params).items()}
  if actual != expected:
    key = sorted(set(actual) ^ set(expected)) or sorted(
        k for k in expected if actual[k] != expected[k])
    first = "/".join(key[0])
    raise UserError(f"Checkpoint {path!r} does not hold config.classifier.name="
                    f"{config.classifier.name!r} of this config (first difference: {first}: "
                    f"checkpoint {actual.get(key[0])}, config {expected.get(key[0])}).")
  raw = serialization.msgpack_serialize(params)
  with atomic_write(output) as f:
    f.write(raw)
  return dict(output=os.path.abspath(output), checkpoint=os.path.abspath(path),
              step=int(trained_step), bytes=len(raw),
              num_params=int(sum(np.size(v) for v in traverse_util.flatten_dict(params).values())))


def _host_params(tree):
  """A plain nested dict of float32 numpy arrays (what msgpack stores)."""
  flat = traverse_util.flatten_dict(dict(tree))
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  print(json.dumps(export(FLAGS.config, FLAGS.workdir, FLAGS.output, FLAGS.step)))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir", "output"])  # as a program only
  app.run(errors.report_user_errors(main))
