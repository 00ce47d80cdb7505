"""PDS's two masks from a data set, as its `mask_gen_demo.py` computes them (docs/pds.md §3a).

    python -m tools.pds_masks --data /data/cifar10_train.npz --image_size 32 --num_channels 3 \\
        --out_dir runs/pds

reads the first `--num_images` images (PDS: 200) of an image folder or an `.npz` with `images`,
in [0, 1], and writes `pds_space.npy` = mean(x²) and `pds_freq.npy` = log(1 + mean |DFT2(x)|²)
(unnormalised DFT, no shift), each float32 (C, H, W) as PDS saves them. Point
`config.sampling.tdas.pds_space_mask` / `pds_freq_mask` at them; `pds_alpha` softens both.
`--mode calibrate --config.calibrate.method=pds` writes the same files from `config.data.path`.
"""
from absl import app, flags

import calibrate_mode
import errors


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_string("data", None, "An image folder (PNG/JPEG) or an .npz with `images` uint8.")
  flags.DEFINE_integer("image_size", None, "Image size of the data set.")
  flags.DEFINE_integer("num_channels", 3, "Channels of the data set.")
  flags.DEFINE_integer("num_images", 200, "Images to average (PDS: 200).")
  flags.DEFINE_string("out_dir", None, "Where pds_space.npy and pds_freq.npy go.")


FLAGS = flags.FLAGS


def write_masks(data, image_size, num_channels, num_images, out_dir):
  """Writes the two raw statistics; returns their paths (space, freq)."""
  space_path, freq_path, count, _, _ = calibrate_mode.write_pds_masks(
      data, image_size, num_channels, num_images, out_dir, field="--data")
  print(f"{count} images -> {space_path}, {freq_path}")
  return space_path, freq_path


def main(argv):
  del argv
  write_masks(FLAGS.data, FLAGS.image_size, FLAGS.num_channels, FLAGS.num_images, FLAGS.out_dir)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["data", "image_size", "out_dir"])  # only when run as the tool
  app.run(errors.report_user_errors(main))
