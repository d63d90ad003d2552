"""Errors the user can act on: they name the offending file and line instead of failing deep inside."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input (data, config, or files). The message is meant to be shown as-is, on one line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.raw_message = message
        self.path = None if path is None else Path(path)
        self.line = line
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(location + message)

    def at(self, path: str | Path, line: int | None = None) -> InputError:
        """The same error located at ``path:line`` (keeps a location set deeper down)."""
        if self.path is not None:
            return self
        return InputError(self.raw_message, path, line)
