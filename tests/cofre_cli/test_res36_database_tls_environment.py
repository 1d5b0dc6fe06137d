"""Session 36: the production database check (`cofre_cli._database_tls`) against what
libpq reads besides the URL.

libpq takes a connection setting from the URL first, then from the entry of the
service the URL (or ``PGSERVICE``) names, then from its environment variable, then its
built-in default (libpq's ``conninfo_add_defaults``). So ``PGSSLMODE`` and
``PGSSLROOTCERT`` can neither weaken a URL that says ``sslmode=verify-full`` and pins
``sslrootcert`` nor stand in for them (the check reads only the URL's: a URL without
them is refused whatever the environment says), and the real libpq tests below show
it. What the URL does not say, they fill in: ``PGSSLMINPROTOCOLVERSION=TLSv1`` (or a
service's ``ssl_min_protocol_version``) let the vault speak TLS 1.0 to its database,
and a service entry's ``sslkeylogfile`` (libpq 18, the version psycopg's wheel bundles:
no environment variable sets it) wrote the connection's TLS secrets to a file. The
check now reads those from the URL, the service entry and the environment in libpq's
order, and refuses them; a service whose entry it cannot find is refused too."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cofre.errors import ConfigurationError
from tests.cofre_cli.test_rev35_database_tls import _checks
from tests.support.postgres import PostgresCluster

_REMOTE = "postgresql+psycopg://cofre_vault@db.internal.example:5432/cofre"
_PINNED = "sslmode=verify-full&sslrootcert=/etc/cofre/tls/rds-ca.pem"
_LIBPQ_TLS = (
    "PGHOST",
    "PGHOSTADDR",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
)


@pytest.fixture(autouse=True)
def _clean_libpq_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _LIBPQ_TLS:
        monkeypatch.delenv(name, raising=False)
    # Not the user's ~/.pg_service.conf: libpq reads it when PGSERVICEFILE is unset.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(f"[other]\nsslkeylogfile=/nowhere\n\n[vault]\n{entry}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))


@pytest.mark.parametrize(
    ("environment", "query", "entry", "named"),
    [
        ({"PGSSLMINPROTOCOLVERSION": "TLSv1"}, _PINNED, None, "PGSSLMINPROTOCOLVERSION"),
        ({"PGSSLMAXPROTOCOLVERSION": "TLSv1.1"}, _PINNED, None, "PGSSLMAXPROTOCOLVERSION"),
        ({"PGGSSENCMODE": "prefer"}, _PINNED, None, "PGGSSENCMODE"),
        ({}, f"{_PINNED}&ssl_min_protocol_version=TLSv1.1", None, "the URL"),
        ({}, f"{_PINNED}&sslkeylogfile=/tmp/keys", None, "the URL"),
        ({}, f"{_PINNED}&service=vault", "sslkeylogfile=/tmp/keys", "the service vault"),
        (
            {"PGSERVICE": "vault"},
            _PINNED,
            "ssl_min_protocol_version = TLSv1",
            "the service vault",
        ),
        ({}, f"{_PINNED}&service=vault", "gssencmode=require", "the service vault"),
        ({}, f"{_PINNED}&service=missing", "dbname=cofre", "service missing"),
        # SQLAlchemy drops a query value left empty: libpq never sees this override.
        ({}, f"{_PINNED}&service=vault&sslkeylogfile=", "sslkeylogfile=/k", "the service vault"),
    ],
    ids=[
        "env-min-version",
        "env-max-version",
        "env-gssencmode",
        "url-min-version",
        "url-keylog",
        "service-keylog",
        "service-min-version",
        "service-gssencmode",
        "service-not-found",
        "url-empty-keylog-dropped",
    ],
)
def test_what_libpq_takes_besides_the_urls_sslmode_is_judged(
    *,
    environment: dict[str, str],
    query: str,
    entry: str | None,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if entry is not None:
        _service(tmp_path, monkeypatch, entry)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        _checks(f"{_REMOTE}?{query}", tmp_path)
    assert named in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("environment", "query", "entry"),
    [
        # The URL's own settings win over the environment and the service (libpq's order).
        ({"PGSSLMODE": "disable", "PGSSLROOTCERT": "system"}, _PINNED, None),
        ({"PGSSLMINPROTOCOLVERSION": "TLSv1"}, f"{_PINNED}&ssl_min_protocol_version=TLSv1.3", None),
        ({}, f"{_PINNED}&service=vault", "sslmode=disable\nsslrootcert=system"),
        # What does not weaken the server's verification or the protocol.
        (
            {"PGSSLMINPROTOCOLVERSION": "TLSv1.3", "PGSSLCERT": "/etc/cofre/client.pem"},
            _PINNED,
            None,
        ),
        ({"PGGSSENCMODE": "disable"}, _PINNED, None),
        ({}, f"{_PINNED}&service=vault", "dbname=cofre\n# sslkeylogfile=/tmp/keys"),
    ],
    ids=[
        "env-sslmode",
        "url-version-wins",
        "service-sslmode",
        "harmless-env",
        "gss-disabled",
        "service-comment",
    ],
)
def test_a_pinned_url_is_still_served(
    environment: dict[str, str],
    query: str,
    entry: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if entry is not None:
        _service(tmp_path, monkeypatch, entry)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert "allow_empty_policy" in _checks(f"{_REMOTE}?{query}", tmp_path)


def test_the_environment_cannot_stand_in_for_the_urls_sslmode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq would verify with these, but the URL must say it: an operator reading the
    URL (and the evidence of the settings) sees what protects the connection."""
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/cofre/tls/rds-ca.pem")
    with pytest.raises(ConfigurationError, match="sslmode=verify-full"):
        _checks(_REMOTE, tmp_path)


def test_libpq_takes_the_urls_sslmode_over_the_environment_and_the_service(
    postgres: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real libpq, against the suite's server (no TLS on it): a URL that requires a
    verified TLS connection is refused by the server's lack of TLS, whatever the
    environment and the service entry say; without `sslmode` in the URL, they decide."""
    _service(tmp_path, monkeypatch, "sslmode=disable")
    monkeypatch.setenv("PGSSLMODE", "disable")
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    dsn = postgres.dsn()
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(f"{dsn}?service=vault&sslmode=verify-full&sslrootcert={ca}").close()
    # The same connection without the URL's sslmode: the service's `disable` is taken.
    with psycopg.connect(f"{dsn}?service=vault", connect_timeout=10) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_libpq_takes_what_the_url_leaves_out_from_the_service_and_the_environment(
    postgres: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the check now judges is what libpq uses: a service's `sslkeylogfile` and
    the environment's lowest TLS version, when the URL says neither."""
    keys = tmp_path / "keys.log"
    _service(tmp_path, monkeypatch, f"sslkeylogfile={keys}")
    monkeypatch.setenv("PGSSLMINPROTOCOLVERSION", "TLSv1")
    with psycopg.connect(f"{postgres.dsn()}?service=vault", connect_timeout=10) as connection:
        settings = {
            option.keyword.decode(): (option.val or b"").decode()
            for option in connection.pgconn.info
        }
    assert settings["sslkeylogfile"] == str(keys)
    assert settings["ssl_min_protocol_version"] == "TLSv1"
