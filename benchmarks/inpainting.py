"""Does a fast sampler still respect its conditioning? Inpainting the shipped digits model.

    python -m benchmarks.inpainting --out benchmarks/results/inpainting.json

The centre 8 × 8 of each of the 300 held-out 16 px digits is unknown; `--mode inpaint` fills
it with the PC sampler at each budget, vanilla and with the demo's TDAS filter (calibrated for
20 steps). The digits classifier then reads the results: its accuracy against the true labels,
beside its accuracy on the originals and on the masked inputs (the floor). Both variants fill
the same digits from the same seed, so TDAS − vanilla is paired per digit: a 95 % t interval
over the 300 per-digit differences of correctness (`benchmarks.paired_stats`). Prints a
Markdown table; writes JSON with every digit's correctness.
"""
import json
import os
import tempfile

from absl import app, flags
import numpy as np

import errors
from benchmarks import paired_stats
import controllable
from atomic_io import atomic_savez, atomic_write_text
from configs.demo import digits_ncsnpp
from evaluation import digits_classifier


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("out", "inpainting.json", "JSON output.")
  flags.DEFINE_list("steps", ["20", "50", "200"], "PC steps (NFE = 2 x steps).")
  flags.DEFINE_integer("num_images", 300, "Held-out digits to inpaint (at most 300).")


FLAGS = flags.FLAGS


def correct(classifier, images_uint8, labels) -> np.ndarray:
  """(N,) 1 where the classifier reads the label, else 0."""
  logits, _ = digits_classifier.logits_and_features(classifier, images_uint8 / 255.0)
  return (np.argmax(logits, axis=1) == labels).astype(np.int64)


def accuracy(classifier, images_uint8, labels) -> float:
  return float(np.mean(correct(classifier, images_uint8, labels)))


def run(steps_list, num_images, workdir):
  images, labels = digits_classifier.digits_split(evaluation=True)
  images = np.round(images[:num_images] * 255).astype(np.uint8)
  labels = labels[:num_images]
  path = os.path.join(workdir, "held_out.npz")
  atomic_savez(path, images=images)
  classifier = digits_classifier.load_classifier()
  rows = []
  for steps in steps_list:
    for variant in ("vanilla", "tdas"):
      config = digits_ncsnpp.get_config()
      config.inpaint.images = path
      config.inpaint.num_images = num_images
      config.inpaint.mask = "center"
      config.sampling.num_steps = int(steps)
      config.sampling.tdas.enabled = variant == "tdas"
      summary = controllable.run(config, os.path.join(workdir, f"{variant}_{steps}"), "inpaint")
      with np.load(os.path.join(workdir, f"{variant}_{steps}", "inpaint", "results.npz")) as r:
        samples, inputs = r["samples"], r["inputs"]
      per_digit = correct(classifier, samples, labels)
      rows.append(dict(steps=int(steps), nfe=summary["nfe"], variant=variant,
                       accuracy=float(per_digit.mean()), correct=per_digit.tolist(),
                       seconds=summary["seconds"]))
  return dict(num_images=num_images, mask="center (8 x 8 of 16 x 16 unknown)",
              original_accuracy=accuracy(classifier, images, labels),
              masked_input_accuracy=accuracy(classifier, inputs, labels), rows=rows)


def table_text(result) -> str:
  """Accuracy per variant (± the 95 % interval's half width over digits) and TDAS − vanilla,
  paired per digit, with its interval and verdict."""
  lines = ["| PC steps | NFE | vanilla accuracy | TDAS accuracy | TDAS − vanilla, paired |",
           "|---|---|---|---|---|"]
  by_key = {(r["steps"], r["variant"]): r for r in result["rows"]}
  for steps in sorted({r["steps"] for r in result["rows"]}):
    vanilla, tdas = (dict(enumerate(by_key[(steps, v)]["correct"])) for v in ("vanilla", "tdas"))
    cells = paired_stats.paired_cells(tdas, vanilla, 3, lower_is_better=False)
    lines.append(f"| {steps} | {by_key[(steps, 'vanilla')]['nfe']} | " + " | ".join(cells) + " |")
  lines.append(f"\nOriginals: {result['original_accuracy']:.3f}; masked inputs: "
               f"{result['masked_input_accuracy']:.3f}.")
  return "\n".join(lines)


def main(argv):
  del argv
  result = run(FLAGS.steps, FLAGS.num_images, tempfile.mkdtemp())
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2))
  print(table_text(result))


if __name__ == "__main__":
  define_flags()
  app.run(errors.report_user_errors(main))
