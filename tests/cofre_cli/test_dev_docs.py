"""`cofre dev` serves the API docs; `cofre serve`'s default does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre.settings import Settings
from cofre_cli.devenv import DevEnvironment, dev_settings


def test_dev_turns_the_api_docs_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Registered so that what dev_settings puts in the environment is removed after.
    monkeypatch.delenv("COFRE_SERVER__API_DOCS", raising=False)
    monkeypatch.delenv("COFRE_CONFIG", raising=False)
    assert Settings().server.api_docs is False
    config = tmp_path / "cofre.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    settings = dev_settings(DevEnvironment(data_dir=tmp_path, config_file=config, created=False))
    assert settings.server.api_docs is True
