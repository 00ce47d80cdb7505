"""Evaluation: Inception-v3 features (the FID network), FID / KID / IS, dataset statistics.

- `evaluation.inception`: the 2015-12-05 Inception-v3 of the FID literature as a Flax module, its
  weight file (PyTorch layout, read without PyTorch), input resizing and batched feature extraction
  over all local devices.
- `evaluation.metrics`: pure functions over features (Fréchet distance, KID, Inception Score,
  precision/recall).
- `evaluation.statistics`: mean/covariance of a data set's features, statistics files (ours and
  score_sde's `pool_3` layout), sample folders.
"""
