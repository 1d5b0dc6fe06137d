"""Database credentials from files (Kubernetes secret volumes), never from the command
line, and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from cofre.settings import Settings, load_settings


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_url_and_password_from_files(tmp_path: Path) -> None:
    url = _secret(tmp_path / "url", "postgresql://cofre_vault@db.internal:5432/cofre")
    password = _secret(tmp_path / "password", "s3cr3t-Pa55")
    settings = Settings.model_validate(
        {"database": {"url_file": str(url), "password_file": str(password)}}
    )
    assert settings.database_url == "postgresql://cofre_vault:s3cr3t-Pa55@db.internal:5432/cofre"
    shown = str(settings.redacted()) + repr(settings)
    assert "s3cr3t-Pa55" not in shown


def test_password_env_goes_into_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COFRE_DATABASE__URL", "postgresql://u@h/d")
    monkeypatch.setenv("COFRE_DATABASE__PASSWORD", "p@ss/word")
    url = load_settings().database_url
    assert url == "postgresql://u:p%40ss%2Fword@h/d"
    assert "p@ss/word" not in repr(load_settings())


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"url": "postgresql://u@h/d", "url_file": "/x"}, "only one of COFRE_DATABASE__URL"),
        ({"password": "a", "password_file": "/x"}, "only one of COFRE_DATABASE__PASSWORD"),
        ({"iam_auth": True, "password": "a"}, "IAM_AUTH replaces the password"),
    ],
)
def test_conflicting_sources_are_refused(
    monkeypatch: pytest.MonkeyPatch, database: dict[str, object], message: str
) -> None:
    for key, value in database.items():
        monkeypatch.setenv(f"COFRE_DATABASE__{key.upper()}", str(value).lower())
    with pytest.raises(ConfigurationError, match=message):
        load_settings()


def test_unreadable_or_empty_files_name_the_file_only(tmp_path: Path) -> None:
    empty = _secret(tmp_path / "empty", "")
    settings = Settings.model_validate(
        {"database": {"url": "postgresql://u@h/d", "password_file": str(empty)}}
    )
    with pytest.raises(ConfigurationError, match=f"the database password file {empty} is empty"):
        _ = settings.database_url
    missing = Settings.model_validate({"database": {"url_file": str(tmp_path / "nope")}})
    with pytest.raises(ConfigurationError, match="cannot read the database URL file"):
        _ = missing.database_url


def test_kek_destroy_grace_must_cover_backup_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KEK destroyed before the oldest kept backup expires makes that backup
    undecryptable: such a configuration is refused."""
    monkeypatch.setenv("COFRE_KEYS__BACKUP_RETENTION_SECONDS", str(35 * 86400))
    with pytest.raises(ConfigurationError, match=r"DESTROY_GRACE_SECONDS .* is shorter than"):
        load_settings()
    monkeypatch.setenv("COFRE_KEYS__DESTROY_GRACE_SECONDS", str(35 * 86400))
    assert load_settings().keys.backup_retention_seconds == 35 * 86400
