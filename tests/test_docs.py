"""The documentation stays true: its commands parse, its links resolve, its citations exist.

Every `python main.py ...` and `python -m ...` command in README.md, docs/ and
benchmarks/README.md is parsed as the program would parse it (flags, `--mode`, the `--config`
file, every `--config.<field>`) without running the work. A command that goes stale fails here.
"""
import ast
import functools
import glob
import importlib.util
import os
import re
import shlex

import pytest

import errors
import main
from configs import field_docs
from configs import project_fields
from tools import config_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = sorted([os.path.join(REPO, "README.md"), os.path.join(REPO, "benchmarks", "README.md")]
                   + glob.glob(os.path.join(REPO, "docs", "*.md")))
# Flags absl defines for every program.
_ABSL_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "flagfile", "undefok", "logtostderr",
               "alsologtostderr", "log_dir", "verbosity", "v", "stderrthreshold",
               "showprefixforinfo", "only_check_args", "pdb_post_mortem", "pdb",
               "run_with_pdb", "run_with_profiling", "profile_file", "use_cprofile_for_profiling",
               "logger_levels"}


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def commands(text: str) -> list:
  """Every `python main.py ...` / `python -m ...` command in the fenced code blocks and inline
  code spans of a Markdown text, continuation lines joined."""
  found = []
  for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      start = line.find("python ")
      if start >= 0 and re.match(r"python (main\.py|-m )", line[start:]):
        found.append(line[start:])
  for span in re.findall(r"`(python (?:main\.py|-m) [^`]*)`", text.replace("\n", " ")):
    found.append(span)
  return found


def _words(command: str) -> list:
  """The command's words, up to a shell separator, with embedding quotes dropped."""
  command = re.split(r"\s(?:&&|\|\||;|\||>)\s", command)[0].rstrip(" '\"")
  try:
    return shlex.split(command)
  except ValueError:  # an unbalanced quote from an embedding `... --command="..."`
    return shlex.split(command.replace('"', "").replace("'", ""))


def _placeholder(value: str) -> bool:
  """A value the reader substitutes: $VAR, FILE, PATH, W/..., N′ and the like."""
  return "$" in value or bool(re.search(r"(^|/)[A-Z][A-Z_0-9]*(\b|$)", value)) or "<" in value


def _flag_items(words):
  """(name, value or None) of every `--flag`, `--flag=value` or `--flag value` word."""
  items, k = [], 0
  while k < len(words):
    word = words[k]
    if word.startswith("--"):
      if "=" in word:
        name, value = word[2:].split("=", 1)
      elif k + 1 < len(words) and not words[k + 1].startswith("--"):
        name, value = word[2:], words[k + 1]
        k += 1
      else:
        name, value = word[2:], None
      items.append((name, value))
    k += 1
  return items


@functools.lru_cache(maxsize=None)
def _module_flags(module: str) -> tuple:
  """(flag names, whether it has a config-file flag) that a `python -m` module defines, read
  from its source (flags.DEFINE_*(name, ...), config_flags.DEFINE_config_file(name, ...))."""
  path = os.path.join(REPO, *module.split(".")) + ".py"
  names, config_flag = set(), False
  for node in ast.walk(ast.parse(_read(path))):
    # Flags of the project's modules it imports are its flags too.
    imported = []
    if isinstance(node, ast.ImportFrom) and node.module:
      imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Import):
      imported = [alias.name for alias in node.names]
    for name in imported:
      if (name.split(".")[0] in ("benchmarks", "tools") and name != module
          and os.path.isfile(os.path.join(REPO, *name.split(".")) + ".py")):
        more, more_config = _module_flags(name)
        names |= more
        config_flag |= more_config
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("DEFINE_") and node.args
        and isinstance(node.args[0], ast.Constant)):
      names.add(node.args[0].value)
      if node.func.attr.startswith("DEFINE_bool"):
        names.add("no" + node.args[0].value)
      config_flag |= node.func.attr == "DEFINE_config_file"
  return frozenset(names), config_flag


@functools.lru_cache(maxsize=None)
def _config_fields(path: str) -> frozenset:
  """Every dotted field of the config file at `path` (`file.py` or `file.py:arg`)."""
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_doc_config", os.path.join(REPO, file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except errors.UserError:
    if not arg:
      raise
    # A config made from a folder the reader downloads (configs/diffusers_ncsnpp.py:FOLDER):
    # its fields are a released config's, with every project field.
    return _config_fields("configs/ve/ffhq_ncsnpp.py")
  return frozenset(main._dotted_names(config))  # pylint: disable=protected-access


def problems(command: str) -> list:
  """What in `command` the program would not accept; [] when it parses."""
  words = _words(command)
  if words[1] == "-m":
    module, flag_items = words[2], _flag_items(words[3:])
    if "<" in module:  # `python -m benchmarks.<name>`: a pattern, not a command
      return []
    if module == "pytest":
      return [] if all(os.path.exists(os.path.join(REPO, w)) for w in words[3:]
                       if not w.startswith("-")) else [f"pytest: no such path in {words[3:]}"]
    if not os.path.isfile(os.path.join(REPO, *module.split(".")) + ".py"):
      return [f"no module {module}"]
    known, takes_config = _module_flags(module)
  else:
    flag_items = _flag_items(words[2:])
    known = frozenset(main.FLAGS) | {"no" + name for name, flag in main.FLAGS._flags().items()  # pylint: disable=protected-access
                                     if flag.boolean}
    takes_config = True
  found = []
  config_path = None
  for name, value in flag_items:
    if name.startswith("config."):
      continue
    if name not in known and name not in _ABSL_FLAGS:
      found.append(f"unknown flag --{name}")
    if name == "config" and value:
      config_path = value
    if (words[1] == "main.py" and name == "mode" and value and not _placeholder(value)
        and value not in main.MODES):
      found.append(f"unknown mode {value!r}")
  if any(name in _ABSL_FLAGS for name, _ in flag_items):  # --helpshort and the like
    return found
  if words[1] == "main.py" and not any(name == "mode" for name, _ in flag_items):
    found.append("no --mode")
  overrides = [name[len("config."):] for name, _ in flag_items if name.startswith("config.")]
  if overrides and not takes_config:
    found.append("--config.* overrides on a program without --config")
  if config_path is None:
    if words[1] == "main.py":
      found.append("no --config")
    return found
  if _placeholder(config_path.partition(":")[0]):
    return found
  if not os.path.isfile(os.path.join(REPO, config_path.partition(":")[0])):
    return found + [f"no config file {config_path}"]
  if _placeholder(config_path.partition(":")[2]):
    # A config that takes a path (a folder it reads): its fields are every project field plus
    # those of a released config.
    fields = _config_fields("configs/ve/ffhq_ncsnpp.py")
  else:
    fields = _config_fields(config_path)
  found += [f"{config_path} has no field {name}" for name in overrides if name not in fields]
  return found


ALL_COMMANDS = [(os.path.relpath(path, REPO), command) for path in DOC_FILES
                for command in commands(_read(path))]


def test_the_docs_hold_commands():
  assert len(ALL_COMMANDS) >= 30
  assert any(path == "README.md" for path, _ in ALL_COMMANDS)
  # A command outside a fenced block or a code span would escape the checks below.
  for path in DOC_FILES:
    prose = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    loose = re.findall(r"^\s*python (?:main\.py|-m) .*$", prose, flags=re.M)
    assert loose == [], f"{path}: put these in a ```bash block: {loose}"


@pytest.mark.parametrize("path, command", ALL_COMMANDS)
def test_every_documented_command_parses(path, command):
  assert not problems(command), f"{path}: {command}"


@pytest.mark.parametrize("stale, expected", [
    ("python main.py --config configs/analytic/ffhq32.py --workdir W --mode sample "
     "--config.sampling.sed=3", "has no field sampling.sed"),
    ("python main.py --config configs/analytic/ffhq99.py --workdir W --mode sample",
     "no config file"),
    ("python main.py --config configs/analytic/ffhq32.py --workdir W --mode sampel",
     "unknown mode"),
    ("python main.py --config configs/analytic/ffhq32.py --workdir W --mode sample --tdass",
     "unknown flag --tdass"),
    ("python -m tools.pds_masks --data D --image_size 8 --outdir x", "unknown flag --outdir"),
    ("python -m tools.no_such_tool --x 1", "no module tools.no_such_tool"),
])
def test_a_stale_command_is_caught(stale, expected):
  assert any(expected in problem for problem in problems(stale))


def _anchors(path: str) -> set:
  """GitHub's anchors of a Markdown file's headings."""
  anchors = set()
  for heading in re.findall(r"^#+ (.*)$", _read(path), flags=re.M):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    anchors.add(slug)
  return anchors


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_links_resolve(path):
  text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+://", target):
      continue
    file, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    assert os.path.exists(resolved), f"{path}: link to missing {target}"
    if anchor:
      assert anchor in _anchors(resolved), f"{path}: no heading for #{anchor} in {resolved}"


def _repository_files():
  skip = {".git", ".venv", "__pycache__", "runs"}
  for root, dirs, files in os.walk(REPO):
    dirs[:] = [d for d in dirs if d not in skip]
    for name in files:
      if name.endswith((".py", ".md", ".sh", ".ini", ".txt", ".cfg", ".toml")):
        yield os.path.join(root, name)


def test_no_file_cites_a_document_outside_the_repository():
  outside = re.compile("SEMAN" + r"TICS|\.\./" + "shared")
  citation = re.compile(r"(docs/[a-z_]+\.md) §(\d+[a-z]?)")
  for path in _repository_files():
    text = _read(path)
    assert not outside.search(text), f"{path} cites a document outside the repository"
    for doc, section in citation.findall(text):
      headings = re.findall(r"^#+ §(\d+[a-z]?)\.", _read(os.path.join(REPO, doc)), flags=re.M)
      assert section in headings, f"{path} cites {doc} §{section}, which does not exist"


def test_readme_is_a_front_door_and_no_doc_is_a_lab_note():
  assert len(_read(os.path.join(REPO, "README.md")).splitlines()) <= 250
  # "I" followed by a verb ("I stopped it"), not the identity matrix of "N(0, σ² I)".
  first_person = re.compile(r"\bI (?=[a-z])|\bI'(?:m|ve|d|ll)\b|\b(?i:my|we|our|the issue)\b")
  for path in DOC_FILES:
    # Quotations (the papers' own words) may say "we".
    text = re.sub(r"\"[^\"]*\"|“[^”]*”", "", re.sub(r"```.*?```", "", _read(path), flags=re.S))
    match = first_person.search(text)
    assert match is None, f"{path}: {text[max(0, match.start() - 60):match.end() + 20]!r}"


def test_each_documented_workdir_belongs_to_one_config():
  # Two configs in one workdir clash on its rounds (the fingerprint check stops the second), so
  # a reader who runs the documented commands one after another must never share one.
  owner = {}
  for path, command in ALL_COMMANDS:
    flags = dict(_flag_items(_words(command)[2:]))
    if "workdir" in flags and "config" in flags and not _placeholder(flags["workdir"]):
      assert owner.setdefault(flags["workdir"], flags["config"]) == flags["config"], (
          f"{path}: {command}")


def test_every_project_field_has_one_reference_entry():
  covered = config_reference.coverage()
  assert sorted(set(covered) - set(project_fields.PROJECT_FIELDS)) == []
  missing = [field for field in project_fields.PROJECT_FIELDS if field not in covered]
  assert missing == [], f"add these to configs/field_docs.py: {missing}"
  assert [leaf for leaf, keys in covered.items() if len(keys) > 1] == []
  assert config_reference.coverage({**field_docs.FIELD_DOCS, "sampling.{seed,nope}": "x"})[
      "sampling.nope"] == ["sampling.{seed,nope}"]


def test_config_reference_is_current():
  assert _read(config_reference.OUTPUT) == config_reference.render(), (
      "docs/config_fields.md is stale: run python -m tools.config_reference")
