"""Trains the digits classifier of `evaluation.digits_classifier` and writes its weights.

    python -m tools.train_digits_classifier [--out assets/digits_classifier.msgpack]

writes the flax-msgpack weights and a `.json` beside them (seed, epochs, train and held-out
accuracy). About a minute on 2 CPU cores.
"""
import json

from absl import app
from absl import flags

import errors
from evaluation import digits_classifier

FLAGS = flags.FLAGS


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", digits_classifier.DEFAULT_WEIGHTS,
                      "Where to write the weights (and a .json beside).")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the initialisation and the batches.")
  flags.DEFINE_integer("epochs", 40, "Passes over the 1497 training digits.")


def main(argv):
  del argv
  variables, info = digits_classifier.train_classifier(seed=FLAGS.seed, epochs=FLAGS.epochs)
  digits_classifier.save_classifier(FLAGS.out, variables, info)
  print(json.dumps(info, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
