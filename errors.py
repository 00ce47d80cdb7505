"""The project's user-error type, and the one way a command-line program reports it.

`main.py` prints a `UserError` as one line (`Error: ...`) and exits with status 1: a missing file, a
config value out of range, a checkpoint that does not fit its config, NaNs during sampling. Any
other exception is a bug in this project and keeps its traceback.

`UserError` subclasses `ValueError`, so code that already catches `ValueError` around a call keeps
working; `MissingFileError` is also a `FileNotFoundError`.
"""
import functools
import sys


class UserError(ValueError):
  """A mistake in the user's input: the message names the config field, flag or file to fix."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the run needs is not where the config or a flag says it is."""


class UnwritableError(UserError, PermissionError):
  """A folder the run must write into cannot be written."""


def report_user_errors(main):
  """Wraps an absl `main(argv)` so that a UserError ends the program with one line on stderr,
  `Error: <message>`, and exit status 1, as main.py does; other exceptions keep their
  traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as error:
      sys.exit(f"Error: {error}")
  return wrapped
