"""Input pipelines (datasets.get_split): tfds on mock data, TFRecords, folders, .npz, digits.

Nothing is downloaded: tfds data come from `tfds.testing.mock_data`, the other sources are written
to temporary folders, and the digits ship inside scikit-learn.
"""
import os

import numpy as np
import pytest

import datasets
from configs.tiny import ddpmpp_vp_continuous, digits_ddpmpp

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


def _config(dataset="CIFAR10", image_size=16, num_channels=3, batch_size=8, random_flip=False,
            **data):
  config = ddpmpp_vp_continuous.get_config()
  config.data.dataset = dataset
  config.data.image_size = image_size
  config.data.num_channels = num_channels
  config.data.random_flip = random_flip
  config.training.batch_size = batch_size
  config.eval.batch_size = batch_size
  for key, value in data.items():
    config.data[key] = value
  return config


def _first(dataset, count=1):
  iterator = dataset.as_numpy_iterator()
  batches = [next(iterator)["image"] for _ in range(count)]
  return batches[0] if count == 1 else batches


def _all(dataset):
  return np.concatenate([b["image"] for b in dataset.as_numpy_iterator()])


def _asymmetric_images(count, size, channels=3, seed=0):
  """uint8 (count, size, size, channels) images none of which equals its mirror image."""
  images = np.random.default_rng(seed).integers(0, 256, (count, size, size, channels), np.uint8)
  images[:, :, 0] = 0
  images[:, :, -1] = 255
  return images


# ---------------------------------------------------------------------------------------------
# tfds data sets (mocked) and their preprocessing.


@pytest.mark.parametrize("dataset, extra", [("CIFAR10", {}), ("CELEBA", {}),
                                            ("LSUN", {"category": "church_outdoor"})])
def test_tfds_pipelines_give_batches_of_the_configured_shape(dataset, extra):
  config = _config(dataset, **extra)
  with tfds.testing.mock_data(num_examples=12):
    train = _first(datasets.get_split(config, additional_dim=2))
    evaluation = _first(datasets.get_split(config, evaluation=True, batch_size=4))
    host = _first(datasets.get_split(config, process_index=1, process_count=2))
  assert train.shape == (2, 8, 16, 16, 3) and train.dtype == np.float32
  assert evaluation.shape == (4, 16, 16, 3)
  assert host.shape == (4, 16, 16, 3)  # each of 2 hosts reads half of the global batch
  for batch in (train, evaluation, host):
    assert 0.0 <= batch.min() and batch.max() <= 1.0


def test_celeba_takes_the_central_140_px_square():
  config = _config("CELEBA", image_size=16)
  image = np.zeros((218, 178, 3), np.uint8)
  top, left = (218 - 140) // 2, (178 - 140) // 2
  image[top:top + 140, left:left + 140] = 255  # white exactly where the crop is
  out = datasets._preprocess_fn(config, "celeb_a")(tf.constant(image)).numpy()  # pylint: disable=protected-access
  assert out.shape == (16, 16, 3)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)


@pytest.mark.parametrize("image_size", [16, 128])
def test_lsun_takes_the_central_square(image_size):
  """Other sizes crop the largest central square, then resize; 128 px resizes, then crops."""
  config = _config("LSUN", image_size=image_size, category="bedroom")
  image = np.zeros((40, 70, 3), np.uint8)
  image[:, 15:55] = 200  # the central 40x40 square
  out = datasets._preprocess_fn(config, "lsun/bedroom")(tf.constant(image)).numpy()  # pylint: disable=protected-access
  assert out.shape == (image_size, image_size, 3)
  border = 2 if image_size == 128 else 0  # resizing first blends the last pixel of each side
  np.testing.assert_allclose(out[:, border:image_size - border], 200 / 255, atol=2e-2)


def test_a_missing_tfds_data_set_names_where_it_was_looked_for(tmp_path):
  config = _config("CIFAR10", tfds_data_dir=str(tmp_path))
  with pytest.raises(datasets.DatasetError) as error:
    datasets.get_split(config)
  message = str(error.value)
  assert str(tmp_path) in message and "cifar10" in message and "Nothing is downloaded" in message
  assert not os.listdir(tmp_path)  # and nothing was fetched into it


def test_unknown_data_set_and_missing_lsun_category_are_clear_errors():
  with pytest.raises(datasets.DatasetError, match="not a known data set"):
    datasets.get_split(_config("IMAGENET"))
  with pytest.raises(datasets.DatasetError, match="config.data.category"):
    datasets.get_split(_config("LSUN", category=""))


# ---------------------------------------------------------------------------------------------
# TFRecords in score_sde's layout (FFHQ / CelebA-HQ).


def _write_tfrecords(path, images):
  """progressive GAN's layout: `shape` = (C, H, W) int64, `data` = the CHW uint8 bytes."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image in images:
      chw = np.ascontiguousarray(image.transpose(2, 0, 1))
      example = tf.train.Example(features=tf.train.Features(feature={
          "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
          "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()]))}))
      writer.write(example.SerializeToString())


def test_tfrecords_read_in_order_and_flip_when_training(tmp_path):
  images = _asymmetric_images(6, 8)
  _write_tfrecords(tmp_path / "ffhq-r03.tfrecords", images)
  for path in (tmp_path / "ffhq-r03.tfrecords", tmp_path / "*.tfrecords", tmp_path):
    config = _config("FFHQ", image_size=8, batch_size=3, tfrecords_path=str(path))
    evaluation = _all(datasets.get_split(config, evaluation=True, num_epochs=1))
    np.testing.assert_allclose(evaluation, images / 255.0, atol=1e-6)  # in file order, unflipped
  config = _config("FFHQ", image_size=8, batch_size=6, random_flip=True,
                   tfrecords_path=str(tmp_path / "ffhq-r03.tfrecords"))
  seen = np.concatenate(_first(datasets.get_split(config), count=4)) * 255.0
  flipped = 0
  for image in np.round(seen).astype(np.uint8):
    matches = [k for k in range(6) if np.array_equal(image, images[k])]
    mirrors = [k for k in range(6) if np.array_equal(image, images[k][:, ::-1])]
    assert len(matches) + len(mirrors) == 1
    flipped += len(mirrors)
  assert 0 < flipped < len(seen)


def test_tfrecords_of_another_resolution_are_resized(tmp_path):
  _write_tfrecords(tmp_path / "r04.tfrecords", np.full((2, 16, 16, 3), 77, np.uint8))
  config = _config("CelebAHQ", image_size=8, batch_size=2,
                   tfrecords_path=str(tmp_path / "r04.tfrecords"))
  batch = _first(datasets.get_split(config, evaluation=True))
  assert batch.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(batch, 77 / 255.0, atol=1e-5)


def test_missing_tfrecords_name_the_path(tmp_path):
  config = _config("FFHQ", tfrecords_path=str(tmp_path / "ffhq-r10.tfrecords"))
  with pytest.raises(datasets.DatasetError, match="ffhq-r10.tfrecords"):
    datasets.get_split(config)


# ---------------------------------------------------------------------------------------------
# Image folders and .npz files (config.data.path).


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("images")
  images = _asymmetric_images(10, 8, seed=1)
  for k, image in enumerate(images):
    Image.fromarray(image).save(folder / f"img_{k:02d}.png")
  return str(folder), images


def test_folder_eval_split_is_every_image_in_order(image_folder):
  folder, images = image_folder
  config = _config(image_size=8, batch_size=4, path=folder)
  evaluation = _all(datasets.get_split(config, evaluation=True, num_epochs=1,
                                       drop_remainder=False))
  np.testing.assert_allclose(evaluation, images / 255.0, atol=1e-6)
  again = _all(datasets.get_split(config, evaluation=True, num_epochs=1, drop_remainder=False))
  np.testing.assert_array_equal(evaluation, again)


def test_folder_of_another_size_is_an_error_naming_a_file(image_folder):
  folder, _ = image_folder
  with pytest.raises(datasets.DatasetError, match="img_00.png.*16x16"):
    datasets.get_split(_config(image_size=16, path=folder))


def test_training_flips_and_dequantises_and_the_scaler_centres(image_folder):
  folder, images = image_folder
  config = _config(image_size=8, batch_size=10, random_flip=True, path=folder)
  one_epoch = _first(datasets.get_split(config, uniform_dequantization=True))
  grid = np.floor(one_epoch * 256.0).astype(np.uint8)  # (255 x + u) / 256 -> floor is the pixel
  assert not np.allclose(one_epoch * 255.0, np.round(one_epoch * 255.0), atol=1e-3)
  originals = {images[k].tobytes(): ("same", k) for k in range(10)}
  originals.update({images[k][:, ::-1].tobytes(): ("mirror", k) for k in range(10)})
  found = [originals[image.tobytes()] for image in grid]  # KeyError: neither image nor mirror
  assert sorted(k for _, k in found) == list(range(10))  # one epoch = every image once
  assert {kind for kind, _ in found} == {"same", "mirror"}
  centred = datasets.get_data_scaler(_config(centered=True))(one_epoch)
  assert -1.0 <= centred.min() < -0.9 and 0.9 < centred.max() <= 1.0
  inverse = datasets.get_data_inverse_scaler(_config(centered=True))
  np.testing.assert_allclose(inverse(centred), one_epoch, atol=1e-6)
  uncentred = _config(centered=False)
  np.testing.assert_array_equal(datasets.get_data_scaler(uncentred)(one_epoch), one_epoch)


def test_npz_data_set_and_host_shards(tmp_path):
  images = _asymmetric_images(12, 8, channels=1, seed=2)
  np.savez(tmp_path / "data.npz", images=images)
  config = _config(image_size=8, num_channels=1, batch_size=4, path=str(tmp_path / "data.npz"))
  shards = [_all(datasets.get_split(config, evaluation=True, num_epochs=1, process_index=p,
                                    process_count=2)) for p in (0, 1)]
  assert shards[0].shape == (6, 8, 8, 1)  # host batch 2, 6 images each
  np.testing.assert_allclose(np.concatenate(shards), np.concatenate([images[0::2], images[1::2]])
                             / 255.0, atol=1e-6)
  with pytest.raises(datasets.DatasetError, match="does not exist"):
    datasets.get_split(_config(path=str(tmp_path / "nowhere.npz")))


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits: a real data set that needs no download.


def test_digits_load_offline_with_a_fixed_eval_split():
  train = datasets.digits_images(16, 1)
  evaluation = datasets.digits_images(16, 1, evaluation=True)
  assert train.shape == (1497, 16, 16, 1) and evaluation.shape == (300, 16, 16, 1)
  assert train.dtype == np.uint8 and train.max() == 255 and train.min() == 0
  rgb = datasets.digits_images(32, 3, evaluation=True)
  assert rgb.shape == (300, 32, 32, 3)
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  config = digits_ddpmpp.get_config()
  config.eval.batch_size = 100
  batches = _all(datasets.get_split(config, evaluation=True, num_epochs=1))
  np.testing.assert_allclose(batches, evaluation / 255.0, atol=1e-6)


def test_digits_training_stream_resumes_exactly():
  config = digits_ddpmpp.get_config()
  config.training.batch_size = 16
  stream = _first(datasets.get_split(config, additional_dim=2), count=3)
  assert stream[0].shape == (2, 16, 16, 16, 1)
  resumed = _first(datasets.get_split(config, additional_dim=2, start_step=4))
  np.testing.assert_array_equal(resumed, stream[2])  # steps 4 and 5
  other_seed = _first(datasets.get_split(config, additional_dim=2, seed=config.seed + 1))
  assert not np.array_equal(other_seed, stream[0])
