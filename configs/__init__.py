"""ml_collections configs: score_sde's released configs under their own names, plus TDAS fields.

`default_*_configs.get_default_configs()` build the per-dataset defaults; every released config
(`ve/`, `vp/`, `subvp/`, `ve/ncsnv2/`, `vp/ddpm/`) edits a default; `project_fields` adds this
project's sampling and TDAS fields to every config; `tiny/` holds small CPU configs for tests.
"""
