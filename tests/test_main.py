"""The command line as a user types it: usage errors and `--mode check` on a released checkpoint."""
import errno
import json
import os
import subprocess
import sys

import pytest

from errors import UserError
from reference_cases import GOLDEN_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED_WORKDIR = os.path.join(GOLDEN_DIR, "score_sde_checkpoint", "ncsnpp_ffhq_small")


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture
def golden_config_file(tmp_path):
  """A config file whose get_config() is golden case ncsnpp_ffhq_small's config."""
  path = tmp_path / "ffhq_small.py"
  path.write_text(
      "import json, ml_collections, numpy as np\n"
      f"_CASE = {os.path.join(GOLDEN_DIR, 'ncsnpp_ffhq_small.npz')!r}\n"
      "def get_config():\n"
      "  config = ml_collections.ConfigDict(json.loads(str(np.load(_CASE)['config_json'])))\n"
      "  config.sampling.checkpoint_dir = ''\n"
      "  config.sampling.checkpoint_step = 0\n"
      "  return config\n")
  return str(path)


def test_missing_flags_are_a_usage_error():
  result = _run("--mode", "check")
  assert result.returncode != 0
  assert "--config" in result.stderr and "--workdir" in result.stderr


def test_unknown_mode_is_a_usage_error(golden_config_file):
  result = _run("--config", golden_config_file, "--workdir", RELEASED_WORKDIR, "--mode", "smaple")
  assert result.returncode != 0
  assert "--mode" in result.stderr and "check" in result.stderr


def test_check_mode_reports_the_released_checkpoint(golden_config_file):
  result = _run("--config", golden_config_file, "--workdir", RELEASED_WORKDIR, "--mode", "check")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["step"] >= 0 and summary["model"] == "ncsnpp"
  assert summary["checkpoint"].endswith(os.path.join("checkpoints", "checkpoint_3"))


def test_config_override_reaches_the_loader(golden_config_file):
  result = _run("--config", golden_config_file, "--workdir", RELEASED_WORKDIR, "--mode", "check",
                "--config.sampling.checkpoint_step=7")
  assert result.returncode != 0
  assert "no checkpoint_7" in result.stderr and "[3]" in result.stderr


def test_sample_mode_with_shorthand_flags(tmp_path):
  result = _run("--config", "configs/analytic/ffhq32.py", "--workdir", str(tmp_path), "--mode",
                "sample", "--speedup", "100", "--tdas", "--config.eval.num_samples=4",
                "--config.eval.batch_size=4", "--config.sampling.tdas.lambda2=0.9")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.load(open(tmp_path / "eval" / "sampling.json"))
  assert summary["steps"] == 20 and summary["speedup"] == 100
  assert summary["tdas"]["enabled"] and summary["tdas"]["lambda2"] == 0.9
  assert (tmp_path / "eval" / "vanilla_vs_tdas.png").is_file()


def test_bad_config_value_is_one_clear_line(tmp_path):
  result = _run("--config", "configs/analytic/ffhq32.py", "--workdir", str(tmp_path), "--mode",
                "sample", "--config.sampling.predictor=heun")
  assert result.returncode != 0
  assert "Error: config.sampling.predictor='heun' is not a known predictor" in result.stderr
  assert "Traceback" not in result.stderr
  assert result.stderr.count("is not a known predictor") == 1  # once, not also as a log line


def _error_line(result):
  """The one `Error: ...` line a user error ends with (exit status 1, no traceback)."""
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
  assert len(lines) == 1, result.stderr[-2000:]
  return lines[0]


def test_unknown_config_field_lists_the_close_names(tmp_path):
  line = _error_line(_run("--config", "configs/analytic/ffhq32.py", "--workdir", str(tmp_path),
                          "--mode", "sample", "--config.sampling.sed=3"))
  assert "has no field 'sampling.sed'" in line and "sampling.seed" in line


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("def get_config(:\n", "cannot be loaded: SyntaxError"),
    ("def get_config():\n  return undefined_name\n", "cannot be loaded: NameError"),
], ids=["missing", "syntax_error", "name_error"])
def test_missing_or_broken_config_file_is_one_line(tmp_path, content, message):
  path = tmp_path / "config.py"
  if content is not None:
    path.write_text(content)
  line = _error_line(_run("--config", str(path), "--workdir", str(tmp_path), "--mode", "check"))
  assert message in line and "config.py" in line


def test_empty_workdir_is_refused(tmp_path):
  line = _error_line(_run("--config", "configs/analytic/ffhq32.py", "--workdir=", "--mode",
                          "sample"))
  assert "--workdir is empty" in line
  assert not os.path.exists(os.path.join(REPO, "eval"))


@pytest.fixture
def parsed_flags():
  """main's flags parsed in this process for `--mode check` on a small config."""
  import main  # pylint: disable=g-import-not-at-top
  main.FLAGS(["main.py", "--config=configs/analytic/ffhq32.py", "--workdir=/tmp/unused",
              "--mode=check"])
  yield main
  main.FLAGS.unparse_flags()


@pytest.mark.parametrize("raised, exit_message", [
    (UserError("config.x must be > 0"), "Error: config.x must be > 0"),
    (OSError(errno.ENOSPC, "No space left on device", "/w/eval/samples_3.npz"),
     "Error: the disk is full at '/w/eval/samples_3.npz'"),
    (PermissionError(errno.EACCES, "Permission denied", "/w/eval"),
     "Error: Permission denied at '/w/eval'"),
])
def test_user_and_environment_errors_end_in_one_line(parsed_flags, monkeypatch, raised,
                                                     exit_message):
  def failing_mode(config, workdir, **options):
    raise raised
  monkeypatch.setitem(parsed_flags.MODES, "check", failing_mode)
  with pytest.raises(SystemExit) as exit_info:
    parsed_flags.main(["main.py"])
  assert str(exit_info.value.code).startswith(exit_message)
  # The run's record of command-line fields ends with it (later calls from Python see none).
  from tdas import settings  # pylint: disable=g-import-not-at-top
  assert settings._command_line_fields is None  # pylint: disable=protected-access


@pytest.mark.parametrize("bug", [ValueError("a bug's ValueError"), KeyError("k"),
                                 OSError(errno.EIO, "I/O error")])
def test_a_bug_keeps_its_traceback(parsed_flags, monkeypatch, bug):
  def failing_mode(config, workdir, **options):
    raise bug
  monkeypatch.setitem(parsed_flags.MODES, "check", failing_mode)
  with pytest.raises(type(bug)):
    parsed_flags.main(["main.py"])


def test_tools_report_a_user_error_in_one_line_naming_their_flag(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "tools.pds_masks", "--data", str(tmp_path / "missing.npz"),
       "--image_size", "8", "--out_dir", str(tmp_path / "out")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  line = _error_line(result)
  assert "missing.npz" in line and "(--data)" in line and "config.data.path" not in line
  assert not (tmp_path / "out").exists()


def test_a_configs_own_filter_file_with_tdas_off_is_not_a_warning():
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  from configs.demo import digits_ncsnpp  # pylint: disable=g-import-not-at-top
  from tdas import settings  # pylint: disable=g-import-not-at-top
  config = digits_ncsnpp.get_config()
  assert config.sampling.tdas.filter_file and not config.sampling.tdas.enabled
  argv = ["main.py", "--config", "configs/demo/digits_ncsnpp.py", "--mode", "sample"]
  try:
    for fields, warned in ((main.command_line_fields(argv), False),
                           (main.command_line_fields(argv + [
                               "--config.sampling.tdas.filter_file=f.npz"]), True),
                           (None, True)):  # called from Python: every such field is said
      settings.set_command_line_fields(fields)
      with mock.patch.object(settings.logging, "warning") as warning:
        assert not settings.resolve(config).enabled
      assert warning.called == warned, fields
  finally:
    settings.set_command_line_fields(None)


def test_every_program_imports_beside_every_other():
  """main.py, the tools and the benchmarks share flag names (--input, --out, --config, ...):
  importing them all into one process (as the tests do) must define no flag twice, and each
  program must still define its flags when run."""
  programs = sorted(f"{folder}.{name[:-3]}" for folder in ("tools", "benchmarks")
                    for name in os.listdir(os.path.join(REPO, folder))
                    if name.endswith(".py") and name != "__init__.py")
  script = ("import importlib, sys\nimport main\n"
            f"for name in {programs!r}:\n  importlib.import_module(name)\nprint('imported')\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]
  result = subprocess.run([sys.executable, "-m", "benchmarks.samplers", "--helpshort"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
  assert "--merge" in result.stdout and "--num_samples" in result.stdout, result.stdout[-2000:]
