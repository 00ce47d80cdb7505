"""ml_collections configs: score_sde's released configs under their own names, plus TDAS fields.

`default_*_configs.get_default_configs()` build the per-dataset defaults; every released config
(`ve/`, `vp/`, `subvp/`, `ve/ncsnv2/`, `vp/ddpm/`) edits a default; `project_fields` adds this
project's sampling and TDAS fields to every config; `tiny/` holds small CPU configs for tests.
"""


def load_config_file(path):
  """The config of a config file `FILE` or `FILE:ARG` (its `get_config(ARG)`), as `--config`
  loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  file, *argument = str(path).split(":", 1)
  spec = importlib.util.spec_from_file_location("_user_config", file)
  if spec is None:
    raise OSError(f"{path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*argument)
