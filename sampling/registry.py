"""Tiny name -> class registries for predictors and correctors."""
from errors import UserError


class Registry:
  """A named registry of classes, filled by the `register(name)` decorator."""

  def __init__(self, kind: str, config_field: str):
    self.kind = kind
    self.config_field = config_field
    self._entries = {}

  def register(self, name: str):
    def _register(cls):
      if name in self._entries:
        raise ValueError(f"A {self.kind} named {name!r} is already registered.")
      cls.name = name
      self._entries[name] = cls
      return cls
    return _register

  def get(self, name: str):
    key = str(name).lower()
    if key not in self._entries:
      raise UserError(f"{self.config_field}={name!r} is not a known {self.kind}; known: "
                       f"{sorted(self._entries)}.")
    return self._entries[key]

  def names(self):
    return sorted(self._entries)
