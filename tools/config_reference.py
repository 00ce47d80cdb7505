"""Writes docs/config_fields.md, the reference table of every config field this project adds.

    python -m tools.config_reference            # rewrite docs/config_fields.md
    python -m tools.config_reference --check    # exit 1 if the file is stale

The meanings come from `configs/field_docs.py`, the defaults from `configs/project_fields.py`
(the values every config starts from). tests/test_docs.py fails when a field has no entry or
the file differs from what this writes.
"""
import os
import re
import sys

from absl import app
from absl import flags

from configs import field_docs
from configs import project_fields


def define_flags():
  """Defines this program's flags; called when it runs as a program, so that importing it
  beside other programs (as the tests do) defines none of theirs twice."""
  flags.DEFINE_bool("check", False, "Only compare: exit 1 if docs/config_fields.md is stale.")


FLAGS = flags.FLAGS

OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "config_fields.md")
_GROUP = re.compile(r"^(?P<prefix>[^{}]*)\{(?P<names>[^{}]*)\}(?P<suffix>[^{}]*)$")


def expand(key: str) -> list:
  """'a.{b,c}' -> ['a.b', 'a.c']; a plain dotted name -> [name]."""
  match = _GROUP.match(key)
  if not match:
    return [key]
  return [match["prefix"] + name.strip() + match["suffix"] for name in match["names"].split(",")]


def coverage(docs=None) -> dict:
  """{leaf: [keys of `docs` that cover it]} for every leaf named by `docs` (FIELD_DOCS)."""
  covered = {}
  for key in (field_docs.FIELD_DOCS if docs is None else docs):
    for leaf in expand(key):
      covered.setdefault(leaf, []).append(key)
  return covered


def default_of(field: str):
  """The default value of a project field, from project_fields' section defaults."""
  section, *path = field.split(".")
  value = project_fields.section_defaults(section)
  for name in path:
    value = value[name]
  return value


def _format_default(value) -> str:
  if isinstance(value, str):
    return f"`{value!r}`" if not value else value
  if isinstance(value, tuple):
    return "(" + ", ".join(str(v) for v in value) + ")"
  return str(value)


def render() -> str:
  """The Markdown text of docs/config_fields.md."""
  lines = [
      "# Config fields this project adds",
      "",
      "Every config carries these fields (`configs/project_fields.py`), at the defaults below,",
      "beside score_sde's own. Override any of them on the command line, e.g.",
      "`--config.sampling.tdas.enabled=True`. This file is written by",
      "`python -m tools.config_reference` from `configs/field_docs.py`; edit that file, not this.",
      "",
      "| field | default | meaning |",
      "|---|---|---|",
  ]
  for key, meaning in field_docs.FIELD_DOCS.items():
    defaults = ", ".join(_format_default(default_of(leaf)) for leaf in expand(key))
    lines.append(f"| `{key}` | {defaults} | {meaning} |")
  lines += ["", "## Fields whose values this project extends", "",
            "| field | meaning |", "|---|---|"]
  for key, meaning in field_docs.EXTENDED_FIELDS.items():
    lines.append(f"| `{key}` | {meaning} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  text = render()
  if FLAGS.check:
    with open(OUTPUT, encoding="utf-8") as f:
      if f.read() != text:
        sys.exit(f"Error: {OUTPUT} is stale: run python -m tools.config_reference.")
    return
  with open(OUTPUT, "w", encoding="utf-8") as f:
    f.write(text)
  print(OUTPUT)


if __name__ == "__main__":
  define_flags()
  app.run(main)
