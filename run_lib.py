"""The modes of `main.py`: everything that reads or writes files lives here."""
import json
import os

import jax
import numpy as np
from absl import logging

import checkpoints


def checkpoint_location(config, workdir):
  """Where the mode's checkpoint is read from: `sampling.checkpoint_dir` or <workdir>/checkpoints."""
  directory = config.sampling.get("checkpoint_dir", "") or os.path.join(workdir, "checkpoints")
  return directory, int(config.sampling.get("checkpoint_step", 0))


def check(config, workdir, eval_folder=None):  # pylint: disable=unused-argument
  """Load the configured checkpoint and check that it fits the config's network.

  Prints one JSON line: the checkpoint file, its training step, the model and its parameter count.
  """
  directory, step = checkpoint_location(config, workdir)
  path = checkpoints.find_checkpoint(directory, step)
  variables, step = checkpoints.load_score_sde(path, config=config)
  num_params = int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"])))
  summary = dict(checkpoint=os.path.abspath(path), step=step, model=config.model.name,
                 image_size=config.data.image_size, num_params=num_params,
                 collections=sorted(variables))
  logging.info("Checkpoint %s fits config.model.name=%s (%d parameters).", path,
               config.model.name, num_params)
  print(json.dumps(summary))
  return summary
