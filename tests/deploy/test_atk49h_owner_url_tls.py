"""The migration Job and the retirement CronJob, atk49h: the database owner's URL is
sent only to a verified server.

Review 35 made `cofre serve` refuse a PostgreSQL URL reached over the network without
`sslmode=verify-full` and a pinned `sslrootcert` (psycopg's default, `prefer`, checks
no certificate and falls back to clear text; a server answering in the database's place
may ask for the password in clear, and libpq sends it). That check lives in `serve`'s
production checks alone. The two commands deploy/k8s runs with the most powerful
credential of the deployment, the owner role's URL and password (`cofre db migrate` in
`cofre-migrate`, `cofre audit retire` in `cofre-audit-retire`: DDL on the whole schema,
the audit log's partitions dropped), connect to whatever the URL says: an owner URL
missing `sslmode=verify-full&sslrootcert=...` (docs/operations.md asks for it, nothing
checks it) hands the password to anyone in the path. PCI DSS 4.2.1 / 8.3.2 (authentication
factors protected by strong cryptography in transit). The check is the one `serve` runs
(`cofre_cli._database_tls.unverified_database`); loopback stays a development path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cofre_cli.main import app

OWNER = "postgresql+psycopg://cofre_owner:owner-secret@db.internal.example:5432/cofre"


class _Connected(Exception):
    pass


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """psycopg's connections, recorded and refused (nothing reaches a network)."""
    made: list[Any] = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        made.append((args, kwargs))
        raise _Connected("a connection was attempted")

    monkeypatch.setattr(psycopg, "connect", connect)
    return made


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {"COFRE_DATABASE__URL": url, "COFRE_DATA_DIR": str(tmp_path)}


@pytest.mark.parametrize(
    "query", ["", "?sslmode=require", "?sslmode=verify-full", "?sslmode=verify-ca&sslrootcert=/x"]
)
def test_db_migrate_refuses_an_unverified_owner_url(
    query: str, tmp_path: Path, connects: list[Any]
) -> None:
    result = CliRunner().invoke(app, ["db", "migrate"], env=_env(tmp_path, OWNER + query))
    assert result.exit_code != 0
    assert not connects, "the owner's password went to an unverified server"
    assert "sslmode=verify-full" in result.output
    assert "owner-secret" not in result.output


def test_audit_retire_refuses_an_unverified_owner_url(tmp_path: Path, connects: list[Any]) -> None:
    key = tmp_path / "audit.pem"
    key.write_text("unused: the database is refused first\n")
    env = _env(tmp_path, OWNER) | {
        "COFRE_ARCHIVE__BUCKET": "acme-cofre-audit",
        "COFRE_ARCHIVE__REGION": "eu-west-1",
    }
    result = CliRunner().invoke(app, ["audit", "retire", "--public-key", str(key)], env=env)
    assert result.exit_code != 0
    assert not connects, "the owner's password went to an unverified server"
    assert "sslmode=verify-full" in result.output


def test_a_loopback_owner_url_is_still_a_development_path(
    tmp_path: Path, connects: list[Any]
) -> None:
    url = "postgresql+psycopg://cofre_owner:pw@127.0.0.1:5432/cofre"
    CliRunner().invoke(app, ["db", "migrate"], env=_env(tmp_path, url))
    assert connects  # judged fine: it went on to connect


def test_a_verified_owner_url_goes_on_to_connect(tmp_path: Path, connects: list[Any]) -> None:
    url = OWNER + "?sslmode=verify-full&sslrootcert=/run/secrets/cofre-owner/rds-ca.pem"
    CliRunner().invoke(app, ["db", "migrate"], env=_env(tmp_path, url))
    assert connects
