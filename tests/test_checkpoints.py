"""Released score_sde checkpoints (docs/numerics.md §4): loading, legacy GroupNorm, tree checks, errors."""
import os
import shutil

import numpy as np
import pytest
from flax import serialization, traverse_util

import checkpoints
from reference_cases import GOLDEN_DIR, golden_case

RELEASED_WORKDIR = os.path.join(GOLDEN_DIR, "score_sde_checkpoint", "ncsnpp_ffhq_small")
RELEASED_FILE = os.path.join(RELEASED_WORKDIR, "checkpoints", "checkpoint_3")


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def released():
  case = golden_case("ncsnpp_ffhq_small")
  variables, step = checkpoints.load_score_sde(RELEASED_WORKDIR, config=case["config"])
  return case, variables, step


def test_released_checkpoint_loads_the_ema_weights(released):
  case, variables, step = released
  assert step == int(checkpoints.read_state(RELEASED_FILE)["step"])
  loaded, golden = _flat(variables), _flat(case["variables"])
  assert sorted(loaded) == sorted(golden)
  for name, value in golden.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_optimizer_target_is_never_used(released):
  _, variables, _ = released
  state = checkpoints.read_state(RELEASED_FILE)
  target = _flat(checkpoints.upgrade_legacy_group_norm(state["optimizer"]["target"]))
  loaded = _flat(variables["params"])
  assert sorted(target) == sorted(loaded)
  differing = [k for k in loaded if not np.array_equal(loaded[k], target[k])]
  assert differing, "the reference file's optimizer.target differs from params_ema by design"


def test_released_checkpoint_reproduces_the_golden_output(released):
  from compiled_models import golden_forward  # pylint: disable=g-import-not-at-top
  from reference_cases import relative_error  # pylint: disable=g-import-not-at-top
  case, variables, _ = released
  y = golden_forward("ncsnpp_ffhq_small", variables)
  assert relative_error(y, case["y"]) < 1e-4


def test_file_path_and_step_selection(tmp_path):
  folder = tmp_path / "checkpoints"
  folder.mkdir()
  for n in (1, 3, 12):
    shutil.copy(RELEASED_FILE, folder / f"checkpoint_{n}")
  (folder / "checkpoint_7.tmp").write_bytes(b"partial")  # never mistaken for a checkpoint
  assert checkpoints.find_checkpoint(str(tmp_path)) == str(folder / "checkpoint_12")
  assert checkpoints.find_checkpoint(str(folder)) == str(folder / "checkpoint_12")
  assert checkpoints.find_checkpoint(str(tmp_path), step=3) == str(folder / "checkpoint_3")
  assert checkpoints.find_checkpoint(RELEASED_FILE) == RELEASED_FILE
  with pytest.raises(FileNotFoundError, match=r"no checkpoint_5 .*\[1, 3, 12\]"):
    checkpoints.find_checkpoint(str(tmp_path), step=5)


def test_legacy_group_norm_is_the_only_reshape():
  params = {
      "GroupNorm_0": {"scale": np.ones((1, 1, 1, 8)), "bias": np.zeros((1, 1, 1, 8))},
      "Block_0": {"GroupNorm_3": {"scale": np.ones((1, 1, 1, 4)), "bias": np.zeros((4,))}},
      "InstanceNorm2dPlus_0": {"alpha": np.ones((1, 1, 1, 8))},
      "Conv_0": {"kernel": np.ones((1, 1, 1, 8))},
  }
  shapes = {k: v.shape for k, v in _flat(checkpoints.upgrade_legacy_group_norm(params)).items()}
  assert shapes == {
      "GroupNorm_0/scale": (8,), "GroupNorm_0/bias": (8,),
      "Block_0/GroupNorm_3/scale": (4,), "Block_0/GroupNorm_3/bias": (4,),
      "InstanceNorm2dPlus_0/alpha": (1, 1, 1, 8), "Conv_0/kernel": (1, 1, 1, 8)}


def test_checkpoint_for_another_config_lists_the_differences(released):
  case, _, _ = released
  config = case["config"]
  other = config.copy_and_resolve_references()
  other.model.nf = 16
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.load_score_sde(RELEASED_WORKDIR, config=other)
  message = str(error.value)
  assert RELEASED_FILE in message and "wrong shape" in message and "AttnBlockpp_0/NIN_0/W: checkpoint (16, 16), model (32, 32)" in message
  other = config.copy_and_resolve_references()
  other.model.attn_resolutions = (8, 16)
  with pytest.raises(checkpoints.CheckpointError, match=r"missing: params/AttnBlockpp_3/"):
    checkpoints.load_score_sde(RELEASED_WORKDIR, config=other)


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda d: str(d / "nowhere"), FileNotFoundError, "does not exist"),
    (lambda d: str(d), FileNotFoundError, "No checkpoint_<n> file"),
    (lambda d: _write(d / "checkpoints" / "checkpoint_1", b""), checkpoints.CheckpointError,
     "is empty"),
    (lambda d: _write(d / "checkpoint_1", open(RELEASED_FILE, "rb").read()[:5000]),
     checkpoints.CheckpointError, "not a readable flax msgpack file"),
    (lambda d: _write(d / "checkpoint_1", b"PK\x03\x04 this is a zip, not msgpack"),
     checkpoints.CheckpointError, "not a readable flax msgpack file"),
    (lambda d: _write(d / "checkpoint_1", serialization.msgpack_serialize({"step": 3})),
     checkpoints.CheckpointError, r"lacks \['params_ema'\]"),
    (lambda d: _write(d / "checkpoint_1", serialization.msgpack_serialize([1, 2])),
     checkpoints.CheckpointError, "not a score_sde training state"),
])
def test_unreadable_checkpoints_name_the_path(tmp_path, make, error, pattern):
  path = make(tmp_path)
  with pytest.raises(error, match=pattern) as raised:
    checkpoints.load_score_sde(path)
  assert str(tmp_path) in str(raised.value)
