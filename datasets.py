"""Image data sets read from disk, as uint8 batches (N, H, W, C).

The minimal readers `--mode stats` needs (`config.data.path`):

- an image folder: every PNG / JPEG file below it (recursively, in sorted path order), each
  converted to RGB (num_channels 3) or greyscale (1) and checked against the config's size;
- an `.npz` holding `images`, uint8 (N, H, W, C).

Images are never resized or cropped: an image of another size is an error naming the file, so the
statistics are always of the data the model was trained on. Nothing is downloaded.

Training reads through `get_dataset` / `get_split` (tf.data, further below): score_sde's tfds and
TFRecord data sets, the same folders and `.npz` files, and scikit-learn's bundled digits.
"""
import os
from typing import Iterator, List, Optional

import numpy as np
from errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DatasetError(UserError):
  """A data set that is missing, unreadable, empty or of the wrong shape."""


def list_image_files(path: str) -> List[str]:
  """Sorted paths of every PNG / JPEG file below the folder `path` (recursive)."""
  if not os.path.isdir(path):
    raise DatasetError(f"Image folder {path!r} does not exist (config.data.path).")
  files = []
  for root, dirs, names in os.walk(path):
    dirs.sort()
    files.extend(os.path.join(root, name) for name in sorted(names)
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise DatasetError(f"Image folder {path!r} holds no PNG or JPEG file (extensions "
                       f"{', '.join(IMAGE_EXTENSIONS)}).")
  return files


def read_image(path: str, image_size: int, num_channels: int) -> np.ndarray:
  """One image file as uint8 (image_size, image_size, num_channels); errors name the file."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if num_channels not in (1, 3):
    raise DatasetError(f"config.data.num_channels={num_channels!r}: image files give 1 (grey) or "
                       "3 (RGB) channels.")
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("RGB" if num_channels == 3 else "L"), np.uint8)
  except (OSError, UnidentifiedImageError, ValueError) as error:
    raise DatasetError(f"Cannot read image file {path!r}: {error}") from error
  array = array.reshape(array.shape[0], array.shape[1], num_channels)
  if array.shape[:2] != (image_size, image_size):
    raise DatasetError(f"Image file {path!r} is {array.shape[1]}x{array.shape[0]} px; the config "
                       f"expects {image_size}x{image_size} (config.data.image_size). Resize the "
                       "data set first: images are not resized here.")
  return array


def iterate_image_folder(path: str, image_size: int, num_channels: int, batch_size: int = 256,
                         max_images: int = 0) -> Iterator[np.ndarray]:
  """uint8 batches (n, H, W, C) of the images below folder `path`, n <= batch_size.

  `max_images` > 0 stops after that many images (in sorted path order).
  """
  files = list_image_files(path)
  if max_images > 0:
    files = files[:max_images]
  for start in range(0, len(files), batch_size):
    yield np.stack([read_image(f, image_size, num_channels)
                    for f in files[start:start + batch_size]])


def read_image_folder(path: str, image_size: int, num_channels: int,
                      max_images: int = 0) -> np.ndarray:
  """Every image below folder `path` as one uint8 array (N, image_size, image_size, C)."""
  return np.concatenate(list(iterate_image_folder(path, image_size, num_channels,
                                                  max_images=max_images)), axis=0)


def read_npz_images(path: str, image_size: Optional[int] = None,
                    num_channels: Optional[int] = None,
                    field: str = "config.data.path") -> np.ndarray:
  """`images` of an `.npz` file: uint8 (N, H, W, C), checked against the config's shape if given;
  errors name `field`, where the path came from."""
  if not os.path.isfile(path):
    raise DatasetError(f"Data file {path!r} does not exist ({field}).")
  try:
    with np.load(path, allow_pickle=False) as data:
      if "images" not in data.files:
        raise DatasetError(f"Data file {path!r} has no `images` array (it holds "
                           f"{sorted(data.files)}); expected uint8 images (N, H, W, C).")
      images = data["images"]
  except DatasetError:
    raise
  except Exception as error:  # zipfile / numpy raise several types for a damaged file
    raise DatasetError(f"Data file {path!r} is not a readable .npz: {error}") from error
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DatasetError(f"Data file {path!r}: `images` is {images.dtype} {images.shape}; expected "
                       "uint8 (N, H, W, C).")
  expected = (image_size, image_size, num_channels)
  if image_size is not None and num_channels is not None and images.shape[1:] != expected:
    raise DatasetError(f"Data file {path!r} holds {images.shape[1:]} images (H, W, C); the config "
                       f"expects {expected} (config.data.image_size, config.data.num_channels).")
  if images.shape[0] == 0:
    raise DatasetError(f"Data file {path!r} holds no image.")
  return images


def iterate_images(path: str, image_size: int, num_channels: int, batch_size: int = 256,
                   max_images: int = 0, field: str = "config.data.path") -> Iterator[np.ndarray]:
  """uint8 batches (n, H, W, C) of the data set at `path` (an image folder or an `.npz`); errors
  name `field`, the config field or flag that gave the path."""
  if not path:
    raise DatasetError(f"{field} is empty: set it to an image folder (PNG/JPEG) or an "
                       ".npz with `images` uint8 (N, H, W, C).")
  if os.path.isdir(path):
    yield from iterate_image_folder(path, image_size, num_channels, batch_size, max_images)
    return
  if path.endswith(".npz"):
    images = read_npz_images(path, image_size, num_channels, field)
    if max_images > 0:
      images = images[:max_images]
    for start in range(0, images.shape[0], batch_size):
      yield images[start:start + batch_size]
    return
  if not os.path.exists(path):
    raise DatasetError(f"Data set {path!r} does not exist ({field}).")
  raise DatasetError(f"Data set {path!r} is neither a folder of images nor an .npz file "
                     f"({field}).")



# ==============================================================================================
# Training and evaluation pipelines (tf.data): score_sde's data sets, folders, .npz, digits.
# ==============================================================================================
#
# `get_dataset(config)` builds score_sde's input pipelines. Which images:
#   config.data.path set        -> that image folder or .npz (the readers above; no resizing)
#   data.dataset = 'CIFAR10'    -> tfds `cifar10` (train / test)
#   data.dataset = 'SVHN'       -> tfds `svhn_cropped` (train / test)
#   data.dataset = 'CELEBA'     -> tfds `celeb_a` (train / validation): 140 px centre crop, then
#                                  resized (antialiased bilinear) to data.image_size
#   data.dataset = 'LSUN'       -> tfds `lsun/<data.category>` (train / validation): image_size 128
#                                  resizes the short side then centre-crops; other sizes centre-crop
#                                  the largest square, then resize it (antialiased bicubic)
#   data.dataset = 'FFHQ' / 'CelebAHQ' -> the TFRecord file(s) at data.tfrecords_path in score_sde's
#                                  layout (features `shape` [3] int64 = (C, H, W) and `data` raw uint8
#                                  bytes, as progressive GAN's dataset_tool writes); eval = train
#   data.dataset = 'DIGITS'     -> scikit-learn's 1797 bundled 8x8 handwritten digits, upsampled
#                                  (bicubic) to data.image_size; every 6th image is the eval split
# tfds data sets are read from config.data.tfds_data_dir, else $TFDS_DATA_DIR, else
# ~/tensorflow_datasets, and never downloaded: a data set that is not there is a DatasetError that
# says where it was looked for and how to prepare it.
#
# Batches are dicts {'image': float32 [0, 1]} of shape (host_batch, H, W, C), or
# (additional_dim, host_batch, H, W, C) when several steps run per compiled call; host_batch =
# batch_size / jax.process_count() and each host reads its own shard of the data. On the host, the
# batch is then split over the local devices (batch_size / jax.device_count() rows each) by the
# step's batch sharding. Training batches are shuffled, randomly flipped (data.random_flip) and
# uniformly dequantised ((255·x + u) / 256, u ~ U[0, 1), data.uniform_dequantization); the model
# sees `get_data_scaler(config)` of them (2x - 1 when data.centered). Evaluation batches come in a
# fixed order and are never flipped.
#
# Randomness is reproducible: the shuffle of an indexed source (digits, .npz, folder) is a function
# of (seed, epoch) and every flip / dequantisation a function of (seed, position in the stream), so
# `start_step` resumes such a pipeline exactly where an uninterrupted run would be. Streamed sources
# (tfds, TFRecord) reseed their shuffle buffer from (seed, start) instead.

TFDS_NAMES = {"CIFAR10": "cifar10", "SVHN": "svhn_cropped", "CELEBA": "celeb_a"}
TFDS_EVAL_SPLITS = {"cifar10": "test", "svhn_cropped": "test", "celeb_a": "validation"}
TFRECORD_DATASETS = ("FFHQ", "CELEBAHQ")
CELEBA_CROP = 140            # score_sde's centre crop of CelebA's 178x218 images
SHUFFLE_BUFFER = 10000       # streamed sources' shuffle buffer (score_sde's), of encoded images
DIGITS_EVAL_EVERY = 6        # DIGITS: images 0, 6, 12, ... form the eval split (300 of 1797)


def _tf():
  """TensorFlow, imported on first use, with its GPUs hidden (JAX owns the accelerators)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # already initialised: nothing to hide any more
    pass
  return tf


def get_data_scaler(config):
  """x in [0, 1] -> model space: 2x - 1 when data.centered (docs/numerics.md §1), else x."""
  if config.data.centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config):
  """Model space -> [0, 1] (the inverse of `get_data_scaler`)."""
  if config.data.centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


def tfds_data_dir(config) -> str:
  """Where tfds data sets are read: config.data.tfds_data_dir, $TFDS_DATA_DIR, ~/tensorflow_datasets."""
  return (config.data.get("tfds_data_dir", "") or os.environ.get("TFDS_DATA_DIR", "")
          or os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, h, w) -> uint8 (N, size, size), bicubic (PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if images.shape[1:] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
                   for image in images])


def digits_held_out(count: int) -> np.ndarray:
  """(count,) bool: which of scikit-learn's digits (in its order) form the eval split."""
  return np.arange(count) % DIGITS_EVAL_EVERY == 0


def digits_images(image_size: int = 16, num_channels: int = 1, evaluation: bool = False):
  """scikit-learn's bundled handwritten digits as uint8 (N, image_size, image_size, num_channels).

  The 8x8 images (ink 0..16, white digit on black) are scaled to 0..255 and upsampled bicubically;
  with 3 channels the grey image is repeated. Images 0, 6, 12, ... (300) are the eval split, the
  other 1497 the training split. Nothing is downloaded: the data ship inside scikit-learn.
  """
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DatasetError("data.dataset='DIGITS' needs scikit-learn (pip install -r "
                       "requirements.txt).") from error
  if num_channels not in (1, 3):
    raise DatasetError(f"config.data.num_channels={num_channels!r}: DIGITS gives 1 (grey) or 3 "
                       "channels.")
  if image_size < 8:
    raise DatasetError(f"config.data.image_size={image_size!r}: DIGITS are 8 px, upsampled to "
                       "data.image_size >= 8.")
  ink = load_digits().images  # (1797, 8, 8) float, 0..16
  images = np.round(ink * (255.0 / 16.0)).astype(np.uint8)
  held_out = digits_held_out(images.shape[0])
  images = images[held_out] if evaluation else images[~held_out]
  images = _upsample(images, image_size)[..., None]
  return np.repeat(images, num_channels, axis=-1) if num_channels == 3 else images


def labelled_images(config, evaluation: bool = False):
  """(images, labels) of the config's data set, whole in memory, for training a classifier.

  images: float32 (N, H, W, C) in the score model's data space (`get_data_scaler`: [0, 1], or
  [-1, 1] with data.centered); labels: int32 (N,). Three sources have labels:
  - data.dataset 'DIGITS' (no data.path): the split of `digits_images` with scikit-learn's
    targets 0..9;
  - an `.npz` at data.path holding `images` (uint8, as `read_npz_images` reads) and `labels`
    (integers >= 0, one per image). Like `get_split`, both splits are then the whole file;
  - a prepared tfds data set with a `label` feature (data.dataset 'CIFAR10', 'SVHN'): its
    training or evaluation split, preprocessed as for score training.
  Any other data set raises DatasetError.
  """
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  path = str(config.data.get("path", "") or "")
  if path.endswith(".npz"):
    images = read_npz_images(path, size, channels)
    with np.load(path, allow_pickle=False) as data:
      if "labels" not in data.files:
        raise DatasetError(f"Data file {path!r} has no `labels` array (it holds "
                           f"{sorted(data.files)}); a classifier needs one integer label per "
                           "image.")
      labels = data["labels"]
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
      raise DatasetError(f"Data file {path!r}: `labels` is {labels.dtype} {labels.shape}; expected "
                         f"integers ({images.shape[0]},), one per image.")
    if labels.min() < 0:
      raise DatasetError(f"Data file {path!r}: `labels` has negative values ({labels.min()}).")
  elif not path and str(config.data.dataset).upper() == "DIGITS":
    images = digits_images(size, channels, evaluation=evaluation)
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    targets = load_digits().target
    held_out = digits_held_out(targets.shape[0])
    labels = targets[held_out] if evaluation else targets[~held_out]
  elif not path and str(config.data.dataset).upper() in TFDS_NAMES:
    unit, labels = _labelled_tfds(config, TFDS_NAMES[str(config.data.dataset).upper()],
                                  evaluation)
    return np.asarray(get_data_scaler(config)(unit), np.float32), labels
  else:
    source = (f"config.data.path={path!r}" if path
              else f"config.data.dataset={config.data.dataset!r}")
    raise DatasetError(f"{source} has no class labels here: labels are available for DIGITS, "
                       f"the labelled tfds data sets ({', '.join(sorted(TFDS_NAMES))} with a "
                       "`label` feature) and an .npz file (config.data.path) holding `images` "
                       "and `labels`.")
  unit = images.astype(np.float32) / np.float32(255.0)
  return np.asarray(get_data_scaler(config)(unit), np.float32), labels.astype(np.int32)


def _labelled_tfds(config, name, evaluation):
  """(float32 (N, S, S, C) in [0, 1], int32 (N,)) of a whole split of tfds data set `name`, in
  its stored order, preprocessed as `get_split` does; unflipped (the classifier trainer mirrors
  its batches under data.random_flip)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split = TFDS_EVAL_SPLITS[name] if evaluation else "train"
  stream, prepare, where = _tfds_stream(config, name, split, False, 0, 0, 1, with_labels=True)
  stream = stream.map(lambda encoded, label: (prepare(encoded), label),
                      num_parallel_calls=_tf().data.AUTOTUNE).batch(1024)
  images, labels = [], []
  for image_batch, label_batch in tfds.as_numpy(stream):
    images.append(image_batch.astype(np.float32))
    labels.append(label_batch.astype(np.int32))
  if not images:
    raise DatasetError(f"{where} holds no images.")
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.info("Labelled data: %s, %d images.", where, sum(len(b) for b in images))
  return np.concatenate(images), np.concatenate(labels)


def _centre_crop(tf, image, size):
  """The central (size, size) window of an (H, W, C) image."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  return tf.image.crop_to_bounding_box(image, (height - size) // 2, (width - size) // 2, size, size)


def _resize_short_side(tf, image, size):
  """Resizes a float (H, W, C) image so that its shorter side is `size` (antialiased bilinear)."""
  height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  ratio = size / tf.minimum(height, width)
  new_size = [tf.cast(tf.round(height * ratio), tf.int32), tf.cast(tf.round(width * ratio), tf.int32)]
  return tf.image.resize(image, new_size, antialias=True)


def _square_crop_resize(tf, image, size):
  """The largest central square of a uint8 image, resized to (size, size) (antialiased bicubic),
  back to uint8: score_sde's LSUN preprocessing."""
  side = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
  image = _centre_crop(tf, image, side)
  image = tf.image.resize(tf.cast(image, tf.float32), [size, size], antialias=True,
                          method=tf.image.ResizeMethod.BICUBIC)
  return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def _to_unit(tf, image):
  return tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]


def _fit_to_size(tf, image, size, channels):
  """A float [0, 1] image of any size -> (size, size, channels): resized (bilinear, antialiased)
  when its size differs; a no-op for images of the configured size."""
  shape = tf.shape(image)
  image = tf.cond(tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
                  lambda: image, lambda: tf.image.resize(image, [size, size], antialias=True))
  image.set_shape((size, size, channels))
  return image


def _preprocess_fn(config, name):
  """uint8 (h, w, C) image of tfds data set `name` -> float32 [0, 1] (S, S, C), S = image_size."""
  tf = _tf()
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  if name == "celeb_a":

    def preprocess(image):
      image = _resize_short_side(tf, _centre_crop(tf, _to_unit(tf, image), CELEBA_CROP), size)
      return _fit_to_size(tf, image, size, channels)

  elif name.startswith("lsun/"):

    def preprocess(image):
      if size == 128:
        image = _centre_crop(tf, _resize_short_side(tf, _to_unit(tf, image), size), size)
      else:
        image = _to_unit(tf, _square_crop_resize(tf, image, size))
      image.set_shape((size, size, channels))
      return image

  else:

    def preprocess(image):
      return _fit_to_size(tf, _to_unit(tf, image), size, channels)

  return preprocess


def _tfds_stream(config, name, split, train, seed, process_index, process_count,
                 with_labels=False):
  """(dataset of encoded images, encoded image -> float [0, 1] (S, S, C), description) of a
  prepared tfds data set. Images stay encoded until after the shuffle buffer (less memory).
  `with_labels`: the dataset yields (encoded image, class label) pairs instead; a data set
  without a `label` feature is a DatasetError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = tfds_data_dir(config)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as error:  # tfds raises its own DatasetNotFoundError for unknown names
    raise DatasetError(f"tensorflow-datasets has no data set {name!r} (from config.data.dataset="
                       f"{config.data.dataset!r}): {error}") from error
  if process_count > 1:
    split = tfds.even_splits(split, n=process_count)[process_index]
  # Evaluation reads the files one after the other: the split comes in its stored order.
  read_config = (tfds.ReadConfig(shuffle_seed=int(seed)) if train
                 else tfds.ReadConfig(interleave_cycle_length=1))
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=train, read_config=read_config,
                                 decoders={"image": tfds.decode.SkipDecoding()})
  except (AssertionError, FileNotFoundError) as error:
    raise DatasetError(
        f"The tfds data set {name!r} is not prepared in {data_dir!r} (looked for "
        f"{builder.data_dir!r}). Nothing is downloaded at run time: prepare it once on a machine "
        f"with network (`tfds build {name} --data_dir DIR`) and copy DIR here, then point "
        "config.data.tfds_data_dir (or $TFDS_DATA_DIR) at it.") from error
  tf = _tf()
  preprocess = _preprocess_fn(config, name)
  channels = int(config.data.num_channels)

  def prepare(encoded):
    return preprocess(tf.io.decode_image(encoded, channels=channels, expand_animations=False))

  where = f"tfds {name} ({split}) in {data_dir}"
  if with_labels:
    if "label" not in builder.info.features:
      raise DatasetError(f"{where} has no class labels (its features are "
                         f"{sorted(builder.info.features)}): a classifier needs a `label`.")
    return dataset.map(lambda example: (example["image"], example["label"])), prepare, where
  dataset = dataset.map(lambda example: example["image"])
  return dataset, prepare, where


def _tfrecord_files(config):
  tf = _tf()
  path = str(config.data.get("tfrecords_path", "") or "")
  if not path:
    raise DatasetError(f"config.data.dataset={config.data.dataset!r} reads TFRecords: set "
                       "config.data.tfrecords_path to the .tfrecords file (e.g. ffhq-r08.tfrecords "
                       "for 256 px, score_sde's layout).")
  files = sorted(tf.io.gfile.glob(path)) if any(c in path for c in "*?[") else (
      [path] if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path) else [])
  if not files and tf.io.gfile.isdir(path):
    files = sorted(tf.io.gfile.glob(os.path.join(path, "*.tfrecords")))
  if not files:
    raise DatasetError(f"No TFRecord file at config.data.tfrecords_path={path!r} (a file, a "
                       "glob, or a folder of *.tfrecords). FFHQ / CelebA-HQ are not downloaded: "
                       "make the file with progressive GAN's dataset_tool and put it there.")
  return files


def _tfrecord_stream(config, process_index, process_count):
  """(dataset of FFHQ / CelebA-HQ records ({'shape': (C, H, W) int64, 'data': raw uint8}),
  record -> float [0, 1] (S, S, C) image, description)."""
  tf = _tf()
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  files = _tfrecord_files(config)
  dataset = tf.data.TFRecordDataset(files)
  if process_count > 1:
    dataset = dataset.shard(process_count, process_index)
  features = {"shape": tf.io.FixedLenFeature([3], tf.int64),
              "data": tf.io.FixedLenFeature([], tf.string)}

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    image = tf.reshape(tf.io.decode_raw(example["data"], tf.uint8), example["shape"])
    image = tf.transpose(image, (1, 2, 0))  # (C, H, W) -> (H, W, C)
    return _fit_to_size(tf, _to_unit(tf, image), size, channels)

  return dataset, parse, f"TFRecords {files}"


def _indexed_source(config, train):
  """(number of images, index -> float [0, 1] (S, S, C) image, description) for the sources held
  or listed in memory: DIGITS, an .npz and an image folder (data.path)."""
  tf = _tf()
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  path = str(config.data.get("path", "") or "")
  if path and os.path.isdir(path):
    files = list_image_files(path)
    read_image(files[0], size, channels)  # a folder of another size fails here, not mid-run

    def load_file(index):
      return read_image(files[int(index)], size, channels)

    def load(index):
      image = tf.numpy_function(load_file, [index], tf.uint8, stateful=False)
      image.set_shape((size, size, channels))
      return _to_unit(tf, image)

    return len(files), load, f"image folder {path} ({len(files)} images)"
  if path:
    if not path.endswith(".npz"):
      if not os.path.exists(path):
        raise DatasetError(f"Data set {path!r} does not exist (config.data.path).")
      raise DatasetError(f"Data set {path!r} is neither a folder of images nor an .npz file "
                         "(config.data.path).")
    images, where = read_npz_images(path, size, channels), f".npz {path}"
  else:
    images, where = digits_images(size, channels, evaluation=not train), "scikit-learn digits"
  table = tf.constant(images)
  return images.shape[0], lambda index: _to_unit(tf, tf.gather(table, index)), (
      f"{where} ({images.shape[0]} images)")


def _index_stream(tf, size, seed, start, shuffle, num_epochs):
  """(position, index) pairs: epoch e visits range(size) in the order stateless_shuffle(seed, e);
  the stream starts at position `start` (= epoch start // size, offset start % size)."""
  first_epoch, offset = divmod(int(start), int(size))
  epochs = (tf.data.Dataset.counter(first_epoch) if num_epochs is None
            else tf.data.Dataset.range(first_epoch, int(num_epochs)))

  def epoch_order(epoch):
    order = tf.range(size, dtype=tf.int64)
    if shuffle:
      order = tf.random.experimental.stateless_shuffle(
          order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    return tf.data.Dataset.from_tensor_slices(order)

  indices = epochs.flat_map(epoch_order).skip(offset)
  return tf.data.Dataset.zip((tf.data.Dataset.counter(int(start)), indices))


def _source_name(config) -> str:
  if config.data.get("path", ""):
    return "PATH"
  return str(config.data.dataset).upper()


def get_split(config, *, evaluation=False, batch_size=None, additional_dim=None,
              uniform_dequantization=None, num_epochs=None, start_step=0, seed=None,
              drop_remainder=True, process_index=None, process_count=None):
  """One input pipeline (a `tf.data.Dataset`) of the configured data set; see the notes above.

  Args:
    config: data.{dataset, image_size, num_channels, random_flip, uniform_dequantization, path,
      tfrecords_path, category, tfds_data_dir} and the batch sizes are read.
    evaluation: the evaluation split (fixed order, no flips) instead of the training one.
    batch_size: global batch size; default training.batch_size (eval.batch_size with evaluation).
    additional_dim: if given, batches are grouped by this many into (additional_dim, B, H, W, C)
      (training.n_jitted_steps steps per compiled call).
    uniform_dequantization: default data.uniform_dequantization.
    num_epochs: passes over the data (None = forever).
    start_step: training batches already consumed (a resumed run's optimiser step, whatever
      additional_dim is): the stream starts after them.
    seed: shuffling / augmentation seed (default config.seed).
    drop_remainder: drop a last partial batch (keep it for one exact pass over an eval split).
    process_index / process_count: this host's shard (default: jax's).

  Returns:
    A dataset of {'image': float32 (host_batch, H, W, C)} (or with the leading additional_dim),
    values in [0, 1], host_batch = batch_size / process_count.
  """
  tf = _tf()
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  if batch_size is None:
    batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  field = "config.eval.batch_size" if evaluation else "config.training.batch_size"
  if batch_size % process_count:
    raise DatasetError(f"{field}={batch_size} must be divisible by the number of hosts "
                       f"({process_count}).")
  host_batch = batch_size // process_count
  train = not evaluation
  if uniform_dequantization is None:
    uniform_dequantization = bool(config.data.uniform_dequantization)
  seed = int(config.seed if seed is None else seed)
  shard_seed = seed * 1_000_003 + process_index  # hosts shuffle / augment independently
  start = int(start_step) * host_batch            # images of this host already consumed

  name = _source_name(config)
  if name in ("PATH", "DIGITS"):
    size, load, where = _indexed_source(config, train)
    shard = np.arange(process_index, size, process_count)  # this host's images
    if shard.size == 0:
      raise DatasetError(f"{where}: no image for host {process_index} of {process_count}.")
    table = tf.constant(shard, tf.int64)
    dataset = _index_stream(tf, shard.size, shard_seed, start if train else 0, shuffle=train,
                            num_epochs=num_epochs)
    dataset = dataset.map(lambda position, k: (position, load(tf.gather(table, k))),
                          num_parallel_calls=tf.data.AUTOTUNE)
  else:
    if name in TFRECORD_DATASETS:
      stream, prepare, where = _tfrecord_stream(config, process_index, process_count)
    elif name in TFDS_NAMES or name == "LSUN":
      if name == "LSUN":
        category = str(config.data.get("category", "") or "")
        if not category:
          raise DatasetError("config.data.dataset='LSUN' needs config.data.category (e.g. "
                             "'church_outdoor', 'bedroom').")
        tfds_name, eval_split = f"lsun/{category}", "validation"
      else:
        tfds_name = TFDS_NAMES[name]
        eval_split = TFDS_EVAL_SPLITS[tfds_name]
      stream, prepare, where = _tfds_stream(config, tfds_name,
                                            eval_split if evaluation else "train", train,
                                            shard_seed, process_index, process_count)
    else:
      raise DatasetError(
          f"config.data.dataset={config.data.dataset!r} is not a known data set: choose one of "
          f"{sorted(set(TFDS_NAMES) | {'LSUN', 'FFHQ', 'CelebAHQ', 'DIGITS'})}, or set "
          "config.data.path to an image folder or .npz.")
    if train:
      # Shuffled within each epoch (before the repeat, so the buffer never holds more than one
      # epoch). A resumed run reseeds it: streamed sources resume statistically, not exactly.
      stream = stream.shuffle(SHUFFLE_BUFFER, seed=shard_seed + start,
                              reshuffle_each_iteration=True)
    if train or num_epochs != 1:
      stream = stream.repeat(num_epochs)
    stream = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = tf.data.Dataset.zip((tf.data.Dataset.counter(start if train else 0), stream))

  size, channels = int(config.data.image_size), int(config.data.num_channels)
  flip = bool(config.data.random_flip) and train

  def augment(position, image):
    image.set_shape((size, size, channels))
    key = tf.stack([tf.constant(shard_seed, tf.int64), position])
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=key)
    if uniform_dequantization:
      noise = tf.random.stateless_uniform(image.shape, seed=key + tf.constant([0, 1 << 40],
                                                                            tf.int64))
      image = (noise + image * 255.0) / 256.0
    return {"image": image}

  dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(host_batch, drop_remainder=drop_remainder)
  if additional_dim is not None:
    dataset = dataset.batch(int(additional_dim), drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.info("%s data: %s, host batch %d%s.", "Eval" if evaluation else "Training", where,
               host_batch, f" x {additional_dim}" if additional_dim else "")
  return dataset


def get_dataset(config, additional_dim=None, uniform_dequantization=None, evaluation=False,
                start_step=0):
  """(train_ds, eval_ds) as score_sde's `datasets.get_dataset` returns them (see `get_split`).

  Both repeat forever; with `evaluation` both use eval.batch_size. `start_step` positions the
  training stream after that many (grouped) steps' batches.
  """
  batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  train_ds = get_split(config, batch_size=batch_size, additional_dim=additional_dim,
                       uniform_dequantization=uniform_dequantization, start_step=start_step)
  eval_ds = get_split(config, evaluation=True, batch_size=batch_size,
                      additional_dim=additional_dim,
                      uniform_dequantization=uniform_dequantization)
  return train_ds, eval_ds
