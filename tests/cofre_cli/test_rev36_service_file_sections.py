"""Session 36 review of the database TLS check: a service file's sections read as libpq
reads them (`cofre_cli._database_tls._service_entry`).

libpq (`parseServiceFile`) takes a line starting ``[`` whose name is followed by ``]``
as the service's section whatever follows the ``]`` (``[vault] # production``,
``[vault]x``), and stops at the first section line after the service's own, so a
second ``[vault]`` section further down is never read. The check took only a line that
was exactly ``[vault]`` and merged every section of that name: a header with a comment
after it was no section to it, so the check went on to ``PGSYSCONFDIR``'s file, found a
clean entry there and served, while libpq connected with the first file's entry and its
``sslkeylogfile`` (or TLS 1.0, or GSSAPI in place of the pinned TLS). The real libpq
below shows which entry it takes."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cofre.errors import ConfigurationError
from tests.cofre_cli.test_res36_database_tls_environment import _LIBPQ_TLS
from tests.cofre_cli.test_rev35_database_tls import _checks
from tests.support.postgres import PostgresCluster

_PINNED_REMOTE = (
    "postgresql+psycopg://cofre_vault@db.internal.example:5432/cofre"
    "?sslmode=verify-full&sslrootcert=/etc/cofre/tls/rds-ca.pem&service=vault"
)


@pytest.fixture(autouse=True)
def _clean_libpq_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _LIBPQ_TLS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str) -> Path:
    """`user` as PGSERVICEFILE, and a clean `vault` entry in PGSYSCONFDIR's file."""
    user_file = tmp_path / "user.conf"
    user_file.write_text(user)
    system = tmp_path / "sysconf"
    system.mkdir(exist_ok=True)
    (system / "pg_service.conf").write_text("[vault]\ndbname=cofre\n")
    monkeypatch.setenv("PGSERVICEFILE", str(user_file))
    monkeypatch.setenv("PGSYSCONFDIR", str(system))
    return user_file


@pytest.mark.parametrize(
    "header",
    ["[vault] # production", "[vault]x", "  [vault]  "],
    ids=["comment-after", "text-after", "indented"],
)
def test_a_section_header_libpq_takes_is_the_check_s_too(
    header: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, monkeypatch, f"{header}\nsslkeylogfile=/tmp/keys\n")
    with pytest.raises(ConfigurationError, match="the service vault sets sslkeylogfile"):
        _checks(_PINNED_REMOTE, tmp_path)


def test_a_second_section_of_the_same_name_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq stops at the section after the service's: what follows is not the vault's
    (refusing it refused a configuration libpq connects with safely)."""
    _files(tmp_path, monkeypatch, "[vault]\ndbname=cofre\n[other]\n[vault]\nsslkeylogfile=/k\n")
    assert "allow_empty_policy" in _checks(_PINNED_REMOTE, tmp_path)


def test_libpq_takes_the_section_with_a_comment_after_its_header(
    postgres: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real libpq: the first file's ``[vault] # production`` section is the one it
    connects with (not PGSYSCONFDIR's), and a second ``[vault]`` section is not read."""
    keys = tmp_path / "keys.log"
    _files(tmp_path, monkeypatch, f"[vault] # production\nsslkeylogfile={keys}\n")
    with psycopg.connect(f"{postgres.dsn()}?service=vault", connect_timeout=10) as connection:
        taken = {o.keyword.decode(): (o.val or b"").decode() for o in connection.pgconn.info}
    assert taken["sslkeylogfile"] == str(keys)
    _files(tmp_path, monkeypatch, f"[vault]\n[other]\n[vault]\nsslkeylogfile={keys}\n")
    with psycopg.connect(f"{postgres.dsn()}?service=vault", connect_timeout=10) as connection:
        taken = {o.keyword.decode(): (o.val or b"").decode() for o in connection.pgconn.info}
    assert taken["sslkeylogfile"] == ""
