"""Reading a secret from a file (a Kubernetes secret volume): the settings' helper,
moved out of `cofre.settings` to keep that module small."""

from __future__ import annotations

from pathlib import Path

from cofre.errors import ConfigurationError


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigurationError(f"the {what} file {path} is empty")
    return text
