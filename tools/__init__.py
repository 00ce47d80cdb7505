"""Command-line tools that are not modes of main.py (e.g. `python -m tools.convert_checkpoint`)."""
