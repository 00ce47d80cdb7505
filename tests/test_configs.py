"""Configs: released ones resolve to score_sde's values, every one carries the project fields.

No JAX compilation: these tests only import config modules and compare nested values.
"""
import glob
import importlib
import importlib.util
import os

import ml_collections
import pytest

from configs.project_fields import PROJECT_FIELDS, PROJECT_SECTIONS, add_project_fields
from reference_cases import PARAM_TREE_NAMES, param_tree

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'configs')

# Modules under configs/ that are building blocks, not configs with `get_config()`.
HELPER_FILES = frozenset({
    'project_fields.py', 'field_docs.py', 'default_cifar10_configs.py', 'default_celeba_configs.py',
    'default_lsun_configs.py', 'tiny/common.py', 'ermongroup/common.py'})

# Released-config families of the tiny configs: same fields, same SDE/model/sampler kind.
TINY_COUNTERPARTS = {
    'tiny/ncsnpp_ve_continuous.py': 've/cifar10_ncsnpp_continuous.py',
    'tiny/ncsnpp_ve_discrete.py': 've/cifar10_ncsnpp.py',
    'tiny/ddpmpp_vp_continuous.py': 'vp/cifar10_ddpmpp_continuous.py',
    'tiny/subvp_ddpmpp_continuous.py': 'subvp/cifar10_ddpmpp_continuous.py',
    'tiny/ddpm_vp_discrete.py': 'vp/ddpm/cifar10.py',
    'tiny/ncsnv2_ve.py': 've/ncsnv2/cifar10.py',
    'tiny/digits_ddpmpp.py': 'vp/cifar10_ddpmpp_continuous.py',  # trains on sklearn's digits
}
TINY_SHARED_FIELDS = ('training.sde', 'training.continuous', 'model.name', 'model.embedding_type',
                      'sampling.predictor', 'sampling.corrector')

FFHQ_TDAS = {  # TDAS paper, Table 4: FFHQ 1024 px, 100 steps.
    'sampling.num_steps': 100, 'sampling.tdas.enabled': True, 'sampling.tdas.transform': 'dft',
    'sampling.tdas.lambda1': 0.955, 'sampling.tdas.lambda2': 0.878,
    'sampling.tdas.r1': 0.400, 'sampling.tdas.r2': 0.455}


def _config_files():
  """Every config file under configs/, relative ('ve/ffhq_ncsnpp.py'), helpers excluded."""
  paths = glob.glob(os.path.join(CONFIG_DIR, '**', '*.py'), recursive=True)
  rel = (os.path.relpath(p, CONFIG_DIR).replace(os.sep, '/') for p in paths)
  return sorted(r for r in rel if os.path.basename(r) != '__init__.py' and r not in HELPER_FILES)


CONFIG_FILES = _config_files()
# The released score models' configs: not the FFHQ convenience config, nor the config of
# score_sde's released CIFAR-10 classifier (a classifier, with no score-model tree).
RELEASED_FILES = [f for f in CONFIG_FILES if f.split('/')[0] in ('ve', 'vp', 'subvp')
                  and f not in ('ve/ffhq_ncsnpp.py', 've/cifar10_classifier.py')]


# Configs made from a folder (`--config FILE:FOLDER`), and the folder the tests give them.
CONFIG_ARGUMENTS = {
    'diffusers_ncsnpp.py': os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden',
                                        'diffusers_ncsnpp', 'noattn'),
}


def get_config(config_file):
  """`get_config()` of configs/<config_file>, imported as a package module."""
  module = importlib.import_module('configs.' + config_file[:-len('.py')].replace('/', '.'))
  return module.get_config(*([CONFIG_ARGUMENTS[config_file]]
                             if config_file in CONFIG_ARGUMENTS else []))


def get_config_by_path(config_file):
  """`get_config()` of configs/<config_file>, loaded from its path as `main.py --config` does."""
  path = os.path.join(CONFIG_DIR, config_file)
  spec = importlib.util.spec_from_file_location('config_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([CONFIG_ARGUMENTS[config_file]]
                             if config_file in CONFIG_ARGUMENTS else []))


def flatten(tree, prefix=''):
  """{'model.nf': 128, ...} for a nested ConfigDict or dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def same_value(ours, ref):
  """Equal as score_sde means it: tuples match lists, ints match floats by value, bools only bools.
  """
  if isinstance(ref, (list, tuple)):
    return (isinstance(ours, (list, tuple)) and len(ours) == len(ref)
            and all(same_value(o, r) for o, r in zip(ours, ref)))
  if isinstance(ref, bool) or isinstance(ours, bool):
    return type(ours) is type(ref) and ours == ref
  if isinstance(ref, (int, float)):
    return isinstance(ours, (int, float)) and ours == ref
  return type(ours) is type(ref) and ours == ref


def describe_differences(ours, ref):
  """Lines 'path: ours X, released Y' for every leaf of `ref` that `ours` lacks or changes."""
  lines = []
  for path, value in sorted(ref.items()):
    if path not in ours:
      lines.append(f'{path}: missing, released {value!r}')
    elif not same_value(ours[path], value):
      lines.append(f'{path}: ours {ours[path]!r}, released {value!r}')
  return lines


def project_defaults():
  return flatten(add_project_fields(ml_collections.ConfigDict()))


def test_project_fields_are_the_added_leaves():
  assert len(PROJECT_FIELDS) == len(set(PROJECT_FIELDS))
  assert sorted(project_defaults()) == sorted(PROJECT_FIELDS)
  assert all(f.split('.')[0] in PROJECT_SECTIONS for f in PROJECT_FIELDS)
  assert set(PROJECT_SECTIONS) == {'sampling', 'calibrate', 'data', 'eval', 'inpaint'}


def test_project_fields_keep_score_sde_fields_of_the_sections_they_extend():
  config = get_config('ve/cifar10_ncsnpp_continuous.py')
  assert config.data.dataset == 'CIFAR10' and config.data.image_size == 32
  assert config.sampling.snr == 0.16 and config.data.path == ''
  assert config.calibrate.num_samples == 200


def test_every_reference_config_file_exists_and_nothing_else_is_released():
  released = sorted(param_tree(name)['config_file'] for name in PARAM_TREE_NAMES)
  assert len(released) == len(PARAM_TREE_NAMES) == 31
  assert RELEASED_FILES == released


@pytest.mark.parametrize('name', PARAM_TREE_NAMES)
def test_released_config_matches_score_sde(name):
  case = param_tree(name)
  ref = flatten(case['config'])
  ours = flatten(get_config(case['config_file']))
  differences = describe_differences(ours, ref)
  assert not differences, (
      f"{case['config_file']} differs from score_sde's: " + '; '.join(differences))
  extra = sorted(set(ours) - set(ref) - set(PROJECT_FIELDS))
  assert not extra, f"{case['config_file']} has fields score_sde's lacks: {', '.join(extra)}"
  # A released config runs the vanilla sampler: every project field at its default.
  defaults = project_defaults()
  changed = [f'{p}: {ours.get(p, "<missing>")!r} (default {v!r})'
             for p, v in defaults.items() if p not in ours or not same_value(ours[p], v)]
  assert not changed, f"{case['config_file']} changes project fields: " + '; '.join(changed)


@pytest.mark.parametrize('name', PARAM_TREE_NAMES)
def test_released_config_keeps_number_types(name):
  """sigma_max 1348 stays an int and 90. a float, as in score_sde (the JSON tells them apart)."""
  case = param_tree(name)
  ref = flatten(case['config'])
  ours = flatten(get_config(case['config_file']))
  wrong = [f'{path}: ours {type(ours[path]).__name__} {ours[path]!r}, released '
           f'{type(value).__name__} {value!r}'
           for path, value in sorted(ref.items())
           if isinstance(value, (int, float)) and path in ours
           and type(ours[path]) is not type(value)]
  assert not wrong, f"{case['config_file']}: " + '; '.join(wrong)


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_config_loads_from_its_path_with_project_fields(config_file):
  config = get_config_by_path(config_file)
  assert isinstance(config, ml_collections.ConfigDict)
  flat = flatten(config)
  missing = [f for f in PROJECT_FIELDS if f not in flat]
  assert not missing, f'{config_file} lacks project fields: {", ".join(missing)}'
  for section in ('training', 'sampling', 'eval', 'data', 'model', 'optim'):
    assert isinstance(config[section], ml_collections.ConfigDict), f'{config_file}: {section}'
  assert 'seed' in config


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_get_config_returns_a_fresh_config(config_file):
  """Editing one config (as main.py's flags do) never leaks into the next get_config()."""
  first = get_config(config_file)
  first.sampling.tdas.r1 = 0.123
  first.model.nf = 3
  second = get_config(config_file)
  assert second.sampling.tdas.r1 != 0.123
  assert second.model.nf != 3


def test_ffhq_ncsnpp_is_released_ffhq_plus_tdas_table4():
  ours = flatten(get_config('ve/ffhq_ncsnpp.py'))
  released = flatten(get_config('ve/ffhq_ncsnpp_continuous.py'))
  score_sde_fields = {p: v for p, v in released.items() if p not in PROJECT_FIELDS}
  differences = describe_differences(ours, score_sde_fields)
  assert not differences, 've/ffhq_ncsnpp.py differs from ve/ffhq_ncsnpp_continuous.py: ' + (
      '; '.join(differences))
  assert set(ours) == set(released)
  wrong = [f'{p}: {ours[p]!r}, expected {v!r}' for p, v in FFHQ_TDAS.items()
           if not same_value(ours[p], v)]
  assert not wrong, 've/ffhq_ncsnpp.py TDAS setting: ' + '; '.join(wrong)
  defaults = project_defaults()
  others = [p for p in PROJECT_FIELDS
            if p not in FFHQ_TDAS and not same_value(ours[p], defaults[p])]
  assert not others, f've/ffhq_ncsnpp.py changes other project fields: {others}'


def test_celebahq_1024_is_ffhq_1024_with_another_data_set():
  celebahq = flatten(get_config('ve/celebahq_ncsnpp_continuous.py'))
  ffhq = flatten(get_config('ve/ffhq_ncsnpp_continuous.py'))
  differing = sorted(p for p in ffhq if not same_value(celebahq[p], ffhq[p]))
  assert differing == ['data.dataset', 'data.tfrecords_path', 'training.reduce_mean']


def test_every_tiny_config_has_a_counterpart():
  tiny = [f for f in CONFIG_FILES if f.startswith('tiny/')]
  assert sorted(tiny) == sorted(TINY_COUNTERPARTS)


@pytest.mark.parametrize('config_file', sorted(TINY_COUNTERPARTS))
def test_tiny_config_is_a_small_valid_score_sde_config(config_file):
  counterpart = TINY_COUNTERPARTS[config_file]
  tiny, released = get_config(config_file), get_config(counterpart)
  flat_tiny, flat_released = flatten(tiny), flatten(released)
  assert sorted(flat_tiny) == sorted(flat_released), (
      f'{config_file} fields differ from {counterpart}: '
      f'extra {sorted(set(flat_tiny) - set(flat_released))}, '
      f'missing {sorted(set(flat_released) - set(flat_tiny))}')
  differing = [p for p in TINY_SHARED_FIELDS if not same_value(flat_tiny[p], flat_released[p])]
  assert not differing, f'{config_file} differs from {counterpart} on {differing}'
  assert tiny.data.image_size <= 32
  assert tiny.eval.batch_size == 4
  assert tiny.model.num_scales <= 100
  assert tiny.model.nf <= 32  # DDPM's final GroupNorm(32) needs nf 32; the others use 8
  if 'ch_mult' in tiny.model:  # U-Net models: attention only at resolutions that exist
    resolutions = {tiny.data.image_size // 2**level for level in range(len(tiny.model.ch_mult))}
    assert set(tiny.model.attn_resolutions) <= resolutions
    assert tiny.model.num_res_blocks == 1
