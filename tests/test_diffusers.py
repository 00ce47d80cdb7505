"""diffusers-format NCSN++ folders (the google/ncsnpp-* hub models) loaded as they are.

The golden case `diffusers_ncsnpp/noattn` was saved by diffusers itself (both weight files, both
name sets) with the network's output; the other cases are built here from this project's own
NCSN++ variables through the inverse name pairing.
"""
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

import checkpoints
import diffusers_io
import pytorch_io
import run_lib
from configs import diffusers_ncsnpp as diffusers_config
from errors import MissingFileError, UserError
from models import diffusers_ncsnpp
from models import utils as model_utils
from reference_cases import GOLDEN_DIR, relative_error
from tools import convert_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOATTN = os.path.join(GOLDEN_DIR, "diffusers_ncsnpp", "noattn")
SAFETENSORS, BIN = diffusers_io.WEIGHT_NAMES

# A diffusers NCSN++ with attention at a 128-channel level (8 px -> 4 px), two resnets per level.
ATTENTION_UNET = dict(
    _class_name="UNet2DModel", act_fn="silu", add_attention=True, attention_head_dim=None,
    attn_norm_num_groups=None, block_out_channels=[32, 128], center_input_sample=True,
    class_embed_type=None, down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D"],
    downsample_padding=1, dropout=0.0, flip_sin_to_cos=True, freq_shift=0, in_channels=3,
    layers_per_block=2, mid_block_scale_factor=2 ** 0.5, norm_eps=1e-6, norm_num_groups=None,
    num_class_embeds=None, out_channels=3, resnet_time_scale_shift="default", sample_size=8,
    time_embedding_type="fourier", up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D"])
SCHEDULER = dict(_class_name="ScoreSdeVeScheduler", correct_steps=1, num_train_timesteps=100,
                 sampling_eps=1e-5, sigma_max=50.0, sigma_min=0.01, snr=0.16)


def _write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f)


def _golden_folder(tmp_path, layout="pretrained", weights=(SAFETENSORS, BIN), unet=None,
                   name="model"):
  """A copy of the golden folder: 'pretrained' (unet/, scheduler/) or 'flat' (the hub's)."""
  root = tmp_path / name
  model = root / "unet" if layout == "pretrained" else root
  os.makedirs(model)
  for weight in weights:
    shutil.copy(os.path.join(NOATTN, "unet", weight), model / weight)
  if unet is None:
    shutil.copy(os.path.join(NOATTN, "unet", "config.json"), model / "config.json")
  else:
    _write_json(str(model / "config.json"), unet)
  scheduler = (root / "scheduler_config.json" if layout == "flat"
               else root / "scheduler" / "scheduler_config.json")
  os.makedirs(scheduler.parent, exist_ok=True)
  shutil.copy(os.path.join(NOATTN, "scheduler", "scheduler_config.json"), scheduler)
  return str(root)


def _golden_unet():
  with open(os.path.join(NOATTN, "unet", "config.json")) as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def _jitted_forward(config_json):
  model = model_utils.create_model(json.loads(config_json, object_hook=_config))
  return jax.jit(lambda variables, x, t: model.apply(variables, x, t, train=False))


def _config(d):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(d)


def _forward(config, variables, x, t):
  network = {section: config[section].to_dict() for section in ("data", "model", "training")}
  return np.asarray(_jitted_forward(json.dumps(network, sort_keys=True))(variables, x, t))


@pytest.mark.parametrize("layout,weight", [("flat", SAFETENSORS), ("pretrained", BIN)])
def test_golden_case_from_either_weight_file(tmp_path, layout, weight):
  folder = _golden_folder(tmp_path, layout, weights=(weight,))
  config = diffusers_config.get_config(folder)
  assert config.sampling.checkpoint_dir.startswith(folder)
  variables, step = checkpoints.load_checkpoint(folder, config)
  assert step == 0
  with np.load(os.path.join(NOATTN, "reference.npz")) as reference:
    x, timesteps, y = reference["x"], reference["timesteps"], reference["y"]
  out = _forward(config, variables, x.transpose(0, 2, 3, 1), timesteps)
  assert relative_error(out, y.transpose(0, 2, 3, 1)) < 1e-4
  num_params = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables))
  assert num_params == 112_724


def test_config_is_the_score_sde_config_diffusers_was_made_from():
  config = diffusers_config.get_config(NOATTN)
  with np.load(os.path.join(NOATTN, "reference.npz")) as reference:
    expected = json.loads(str(reference["score_sde_config_json"]))
  for section, fields in (("model", set(expected["model"]) - {"ema_rate", "num_classes"}),
                          ("data", {"image_size", "centered", "num_channels"}),
                          ("sampling", set(expected["sampling"])),
                          ("training", {"sde", "continuous"})):
    for field in fields:
      actual, wanted = config[section][field], expected[section][field]
      if isinstance(actual, tuple):
        actual = list(actual)
      assert actual == pytest.approx(wanted), f"{section}.{field}"
  # The project's own fields keep their defaults.
  assert config.sampling.tdas.enabled is False and config.calibrate.num_samples == 200


def test_names_are_the_files_names():
  """The inverse pairing of the golden network gives exactly the keys diffusers wrote, under
  today's names (.safetensors) and the 2022 ones (.bin)."""
  config = diffusers_config.get_config(NOATTN)
  shapes = checkpoints.expected_variable_shapes(config)
  variables = traverse_util.unflatten_dict(
      {tuple(k.split("/")): np.zeros(s, np.float32) for k, s in shapes.items()})
  for weight, legacy in ((SAFETENSORS, False), (BIN, True)):
    written = diffusers_io.read_weights(os.path.join(NOATTN, "unet", weight))
    built = diffusers_ncsnpp.to_diffusers(variables, config, legacy=legacy)
    assert set(built) == set(written), weight
    assert all(built[k].shape == written[k].shape for k in built)


def _random_variables(config, seed=0):
  rng = np.random.default_rng(seed)
  shapes = checkpoints.expected_variable_shapes(config)
  return traverse_util.unflatten_dict({tuple(k.split("/")): (0.1 * rng.standard_normal(s)).astype(
      np.float32) for k, s in shapes.items()})


def _attention_folder(tmp_path, legacy, unet=ATTENTION_UNET, name="attn"):
  """A flat diffusers folder of ATTENTION_UNET with random weights: (folder, variables)."""
  folder = str(tmp_path / name)
  _write_json(os.path.join(folder, "config.json"), unet)
  _write_json(os.path.join(folder, "scheduler_config.json"), SCHEDULER)
  weight = os.path.join(folder, BIN if legacy else SAFETENSORS)
  open(weight, "wb").close()  # a folder needs a weight file to be one; written below
  config = diffusers_config.get_config(folder)
  variables = _random_variables(config)
  state = diffusers_ncsnpp.to_diffusers(variables, config, legacy=legacy)
  if legacy:
    pytorch_io.save(state, weight)
  else:
    save_file(state, weight)
  return folder, variables


@pytest.mark.parametrize("legacy", [False, True], ids=["safetensors", "bin_2022_names"])
def test_attention_at_128_channels_round_trip(tmp_path, legacy):
  folder, variables = _attention_folder(tmp_path, legacy)
  config = diffusers_config.get_config(folder)
  assert tuple(config.model.attn_resolutions) == (4,) and config.model.num_res_blocks == 2
  assert config.model.sigma_max == 50.0 and config.model.num_scales == 100
  assert config.sampling.snr == pytest.approx(0.16)
  loaded, _ = checkpoints.load_checkpoint(folder, config)
  flat_loaded = traverse_util.flatten_dict(loaded)
  flat_expected = traverse_util.flatten_dict(variables)
  assert set(flat_loaded) == set(flat_expected)
  for key, value in flat_expected.items():  # the same numbers give the same outputs
    np.testing.assert_array_equal(flat_loaded[key], value, err_msg="/".join(key))
  names = set(diffusers_io.read_weights(
      os.path.join(folder, BIN if legacy else SAFETENSORS)))
  q = "query" if legacy else "to_q"
  out = "proj_attn" if legacy else "to_out.0"
  for name in (f"down_blocks.1.attentions.1.{q}.weight", f"up_blocks.0.attentions.0.{out}.bias",
               "mid_block.attentions.0.group_norm.weight", "down_blocks.0.skip_conv.weight",
               "down_blocks.0.resnet_down.conv_shortcut.weight", "up_blocks.0.skip_norm.bias",
               "up_blocks.0.resnets.2.conv_shortcut.weight", "up_blocks.0.resnet_up.conv1.weight",
               "conv_norm_out.weight", "conv_out.bias", "time_embedding.linear_2.weight"):
    assert name in names, name
  assert not any(n.startswith(("down_blocks.1.resnet_down", "up_blocks.1.resnet_up"))
                 for n in names)


def test_leftover_and_missing_tensors_are_listed_together(tmp_path):
  folder, variables = _attention_folder(tmp_path, legacy=False)
  config = diffusers_config.get_config(folder)
  state = diffusers_ncsnpp.to_diffusers(variables, config)
  del state["mid_block.attentions.0.to_k.weight"]
  state["extra.weight"] = np.zeros(3, np.float32)
  save_file(state, os.path.join(folder, SAFETENSORS))
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.load_checkpoint(folder, config)
  message = str(error.value)
  assert "mid_block.attentions.0.to_k.weight" in message and "extra.weight" in message


def _edit(unet, **changes):
  return dict(unet, **changes)


NON_REPRESENTABLE = [
    ("time_embedding_type", dict(time_embedding_type="positional")),
    ("resnet_time_scale_shift", dict(resnet_time_scale_shift="scale_shift")),
    ("attention_head_dim", dict(attention_head_dim=8)),
    ("norm_num_groups", dict(norm_num_groups=32)),
    ("class_embed_type", dict(class_embed_type="timestep")),
    ("num_class_embeds", dict(num_class_embeds=10)),
    ("in_channels", dict(in_channels=1)),
    ("out_channels", dict(out_channels=1)),
    ("down_block_types[1]", dict(
        down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D",
                          "SkipDownBlock2D"],
        up_block_types=["SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D",
                        "SkipUpBlock2D"])),
    ("up_block_types[0]", dict(up_block_types=["AttnSkipUpBlock2D"] + ["SkipUpBlock2D"] * 3)),
    ("mid_block_scale_factor", dict(mid_block_scale_factor=1.0)),
    ("norm_eps", dict(norm_eps=1e-5)),
]


@pytest.mark.parametrize("field,changes", NON_REPRESENTABLE, ids=[f for f, _ in NON_REPRESENTABLE])
def test_non_representable_config_is_one_error_naming_the_field(tmp_path, field, changes):
  folder = _golden_folder(tmp_path, "flat", weights=(SAFETENSORS,),
                          unet=_edit(_golden_unet(), **changes))
  with pytest.raises(diffusers_ncsnpp.DiffusersConfigError, match=r"config\.json: " +
                     field.replace("[", r"\[").replace("]", r"\]") + "="):
    diffusers_config.get_config(folder)


def test_attention_under_128_channels_says_why(tmp_path):
  unet = _edit(ATTENTION_UNET, block_out_channels=[32, 64])
  folder = str(tmp_path / "small")
  _write_json(os.path.join(folder, "config.json"), unet)
  _write_json(os.path.join(folder, "scheduler_config.json"), SCHEDULER)
  open(os.path.join(folder, SAFETENSORS), "wb").close()
  with pytest.raises(UserError, match="64 channels .* 32 GroupNorm groups"):
    diffusers_config.get_config(folder)


def test_scheduler_field_without_equivalent(tmp_path):
  folder = _golden_folder(tmp_path, "flat", weights=(SAFETENSORS,))
  _write_json(os.path.join(folder, "scheduler_config.json"), dict(SCHEDULER, sampling_eps=1e-3))
  with pytest.raises(UserError, match=r"scheduler_config\.json: sampling_eps="):
    diffusers_config.get_config(folder)


def test_missing_files_are_named(tmp_path):
  folder = _golden_folder(tmp_path, "pretrained", weights=())
  with pytest.raises(MissingFileError, match="no weight file"):
    diffusers_config.get_config(folder)
  folder = _golden_folder(tmp_path, "flat", weights=(SAFETENSORS,), name="noscheduler")
  os.remove(os.path.join(folder, "scheduler_config.json"))
  with pytest.raises(MissingFileError, match="scheduler_config.json"):
    diffusers_config.get_config(folder)
  with pytest.raises(MissingFileError, match="does not exist"):
    diffusers_config.get_config(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("weight", [SAFETENSORS, BIN])
def test_damaged_weight_file_is_one_error(tmp_path, weight):
  folder = _golden_folder(tmp_path, "flat", weights=(weight,))
  config = diffusers_config.get_config(folder)
  path = os.path.join(folder, weight)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(UserError, match=os.path.basename(weight).replace(".", r"\.")):
    checkpoints.load_checkpoint(folder, config)


def test_config_that_does_not_match_the_weights(tmp_path):
  folder = _golden_folder(tmp_path, "flat", weights=(SAFETENSORS,),
                          unet=_edit(_golden_unet(), block_out_channels=[8, 16, 16, 32]))
  config = diffusers_config.get_config(folder)
  with pytest.raises(checkpoints.CheckpointError, match="mis-shaped"):
    checkpoints.load_checkpoint(folder, config)


def test_a_config_of_another_network_is_refused():
  config = diffusers_config.get_config(NOATTN)
  config.data.centered = True  # the weights' shapes would not show it
  with pytest.raises(checkpoints.CheckpointError, match="data.centered"):
    checkpoints.load_checkpoint(NOATTN, config)


def _hub_cache(root, repo_id="google/ncsnpp-tiny", revision="0123abcd"):
  """Lays out a Hugging Face cache as huggingface_hub writes it (blobs, symlinked snapshot)."""
  repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
  os.makedirs(os.path.join(repo, "blobs"))
  os.makedirs(os.path.join(repo, "refs"))
  snapshot = os.path.join(repo, "snapshots", revision)
  os.makedirs(snapshot)
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(revision)
  files = {"config.json": os.path.join(NOATTN, "unet", "config.json"),
           SAFETENSORS: os.path.join(NOATTN, "unet", SAFETENSORS),
           "scheduler_config.json": os.path.join(NOATTN, "scheduler", "scheduler_config.json")}
  for k, (name, source) in enumerate(files.items()):
    blob = os.path.join(repo, "blobs", f"blob{k}")
    shutil.copy(source, blob)
    os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
  return snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_resolves_in_the_local_cache(tmp_path, monkeypatch, variable):
  cache = tmp_path / "hub"
  snapshot = _hub_cache(str(cache))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else tmp_path))
  monkeypatch.chdir(tmp_path)  # no local folder named google/...
  config = diffusers_config.get_config("google/ncsnpp-tiny")
  assert os.path.realpath(config.sampling.checkpoint_dir) == os.path.realpath(snapshot)
  variables, _ = checkpoints.load_checkpoint(config.sampling.checkpoint_dir, config)
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(variables)) == 112_724
  with pytest.raises(MissingFileError, match="huggingface-cli download google/ncsnpp-ffhq-256"):
    diffusers_config.get_config("google/ncsnpp-ffhq-256")


def test_hub_names_give_the_data_set():
  assert diffusers_config._dataset_fields("google/ncsnpp-church-256") == dict(
      dataset="LSUN", category="church_outdoor")
  assert diffusers_config._dataset_fields("google/ncsnpp-ffhq-1024") == dict(dataset="FFHQ")


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_check_mode_on_the_folder(tmp_path):
  result = _main(f"--config=configs/diffusers_ncsnpp.py:{NOATTN}", "--config.sampling.snr=0.2",
                 "--workdir", str(tmp_path), "--mode", "check")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["num_params"] == 112_724 and summary["model"] == "ncsnpp"


def test_missing_folder_is_one_line_from_main(tmp_path):
  missing = str(tmp_path / "none")
  result = _main(f"--config=configs/diffusers_ncsnpp.py:{missing}", "--workdir", str(tmp_path),
                 "--mode", "check")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("Error: --config ")
  assert f"The diffusers folder {missing!r} does not exist" in result.stderr
  assert "Traceback" not in result.stderr


def test_sample_mode_with_tdas_on_the_folder(tmp_path):
  folder, _ = _attention_folder(tmp_path, legacy=False)  # smaller to compile than the golden net
  config = diffusers_config.get_config(folder)
  config.eval.batch_size = 4
  config.eval.num_samples = 4
  config.sampling.num_steps = 2
  config.sampling.tdas.enabled = True
  config.sampling.tdas.lambda1, config.sampling.tdas.lambda2 = 0.9, 0.8
  config.sampling.vanilla_comparison = False
  run_lib.sample(config, str(tmp_path / "run"))
  with np.load(str(tmp_path / "run" / "eval" / "samples_0.npz")) as round_file:
    samples = round_file["samples"]
  assert samples.shape == (4, 8, 8, 3) and samples.dtype == np.uint8


def test_convert_writes_the_released_format_and_its_config(tmp_path):
  config = diffusers_config.get_config(NOATTN)
  target = convert_checkpoint.convert(config, "", str(tmp_path))
  expected, _ = checkpoints.load_checkpoint(NOATTN, config)
  spec = importlib.util.spec_from_file_location("converted_config", str(tmp_path / "config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  written = module.get_config()
  assert written.sampling.checkpoint_dir == "" and written.model.nf == 8
  converted, step = checkpoints.load_checkpoint(str(tmp_path), written)
  assert step == 0 and target.endswith("checkpoint_0")
  for a, b in zip(jax.tree_util.tree_leaves(converted), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)


def _hub_unet(size, channels, attention_level, layers):
  """config.json of a google/ncsnpp-* model, as its score_sde config translates."""
  levels = len(channels)
  return dict(
      ATTENTION_UNET, sample_size=size, block_out_channels=channels, layers_per_block=layers,
      down_block_types=["AttnSkipDownBlock2D" if i == attention_level else "SkipDownBlock2D"
                        for i in range(levels)],
      up_block_types=["AttnSkipUpBlock2D" if levels - 1 - k == attention_level
                      else "SkipUpBlock2D" for k in range(levels)])


def test_256px_hub_config_is_score_sde_released_tree(tmp_path):
  """google/ncsnpp-{ffhq,celebahq,church,bedroom}-256 translate to score_sde's released 256 px
  NCSN++: the same variable tree (docs/diffusers.md's parameter count)."""
  from reference_cases import param_tree  # pylint: disable=g-import-not-at-top
  unet = _hub_unet(256, [128, 128, 256, 256, 256, 256, 256], attention_level=4, layers=2)
  folder = str(tmp_path / "hub256")
  _write_json(os.path.join(folder, "config.json"), unet)
  _write_json(os.path.join(folder, "scheduler_config.json"), dict(SCHEDULER, sigma_max=348))
  open(os.path.join(folder, SAFETENSORS), "wb").close()
  config = diffusers_config.get_config(folder)
  released = param_tree("ve__celebahq_256_ncsnpp_continuous")
  assert checkpoints.expected_variable_shapes(config) == released["shapes"]
  assert released["num_params"] == 65_574_549


def test_time_proj_w_must_be_a_copy_of_the_weight(tmp_path):
  folder = _golden_folder(tmp_path, "flat", weights=(BIN,))
  config = diffusers_config.get_config(folder)
  state = pytorch_io.load(os.path.join(folder, BIN))
  state["time_proj.W"] = state["time_proj.W"] + 1.0
  pytorch_io.save(state, os.path.join(folder, BIN))
  with pytest.raises(checkpoints.CheckpointError, match="time_proj.W .* is not a copy"):
    checkpoints.load_checkpoint(folder, config)
