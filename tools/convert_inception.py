"""Converts the FID Inception weights (pytorch-fid's .pth) into an .npz, once.

    python -m tools.convert_inception --input pt_inception-2015-12-05-6726825d.pth \
        --output inception_fid.npz

reads `--input` without PyTorch (`pytorch_io`, zip or legacy serialisation), checks that it is the
FID Inception-v3's state dict (every name and shape), and writes an `.npz` holding the same
PyTorch names and layouts plus `source_sha256` (the .pth's SHA-256, so the provenance check still
works). Point `config.eval.inception_weights` (or $TDAS_INCEPTION_WEIGHTS) at either file.
"""
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

import errors
import atomic_io
from evaluation import inception
from errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("input", None, f"The .pth weight file ({inception.WEIGHTS_FILENAME}).")
  flags.DEFINE_string("output", None, "The .npz to write.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")


def convert(input_path: str, output_path: str, overwrite: bool = False) -> str:
  """Writes `input_path`'s state dict (checked) to `output_path` (.npz). Returns the path."""
  if not output_path.endswith(".npz"):
    raise UserError(f"--output {output_path!r} must end in .npz.")
  if os.path.exists(output_path) and not overwrite:
    raise FileExistsError(f"{output_path!r} exists; pass --overwrite to replace it.")
  state, sha = inception.read_state_dict(input_path)
  inception.state_dict_to_variables(state, source=repr(input_path))  # names and shapes check
  arrays = {k: np.asarray(v, np.float32) for k, v in state.items()
            if not k.endswith("num_batches_tracked")}
  atomic_io.atomic_savez(output_path, compressed=False, source_sha256=np.asarray(sha), **arrays)
  if not sha.startswith(inception.WEIGHTS_SHA256_PREFIX):
    logging.warning("%s has SHA-256 %s..., not the FID weights' %s...", input_path, sha[:8],
                    inception.WEIGHTS_SHA256_PREFIX)
  logging.info("Wrote %d tensors of %s to %s.", len(arrays), input_path, output_path)
  return output_path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  print(convert(FLAGS.input, FLAGS.output, FLAGS.overwrite))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])  # as a program only (tests import it)
  app.run(errors.report_user_errors(main))
