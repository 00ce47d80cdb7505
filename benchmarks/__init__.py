"""Speed and quality-versus-steps studies; each prints a table and writes JSON (and PNG)."""
