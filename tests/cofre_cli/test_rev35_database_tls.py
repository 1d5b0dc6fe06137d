"""Review 35: `cofre serve` (production) refuses a PostgreSQL URL that does not verify
the database server it connects to over the network.

Only RDS IAM authentication required ``sslmode=verify-full``. With a password (or a
client certificate), psycopg's default ``sslmode=prefer`` sends the session over TLS
without checking whom to, or in clear if the server (or whoever answers in its place)
declines TLS: anyone in the path read and changed the token store's rows, the audit
log's entries and the password exchange. And ``verify-full`` without ``sslrootcert``
(or ``sslrootcert=system``) trusts a CA file the environment names
(``PGSSLROOTCERT``, OpenSSL's ``SSL_CERT_FILE``/``SSL_CERT_DIR``), not the one the
configuration pins. A host on loopback or a Unix socket is not a network path, and is
served as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from cofre.errors import ConfigurationError
from cofre.settings import DatabaseSettings, InsecureSettings, Settings
from cofre_cli._production import production_checks

# Everything else production refuses is allowed here: only the database is judged.
ALLOWED = InsecureSettings(
    allow_sqlite=True, allow_empty_policy=True, allow_dev_pki=True, allow_software_hsm=True
)


def _checks(url: str, tmp_path: Path) -> list[str]:
    settings = Settings(
        data_dir=tmp_path, database=DatabaseSettings(url=SecretStr(url)), insecure=ALLOWED
    )
    return production_checks(settings)


@pytest.mark.parametrize(
    "query",
    [
        "",  # psycopg's default: sslmode=prefer
        "?sslmode=require",
        "?sslmode=verify-ca&sslrootcert=/etc/cofre/tls/rds-ca.pem",
        "?sslmode=verify-full",  # the CA from PGSSLROOTCERT or ~/.postgresql
        "?sslmode=verify-full&sslrootcert=system",  # SSL_CERT_FILE, SSL_CERT_DIR
    ],
)
def test_serve_refuses_a_database_url_that_does_not_pin_the_servers_ca(
    query: str, tmp_path: Path
) -> None:
    url = f"postgresql+psycopg://cofre_vault@db.internal.example:5432/cofre{query}"
    with pytest.raises(ConfigurationError) as refused:
        _checks(url, tmp_path)
    said = str(refused.value)
    assert "sslmode=verify-full" in said
    assert "sslrootcert" in said
    assert "db.internal.example" in said
    assert "cofre_vault" not in said  # the URL itself (it may carry a password) is not said


def test_a_host_in_the_query_is_judged_too(tmp_path: Path) -> None:
    url = "postgresql+psycopg://cofre_vault@localhost/cofre?host=db.internal.example"
    with pytest.raises(ConfigurationError):
        _checks(url, tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://cofre_vault@db.internal.example:5432/cofre"
        "?sslmode=verify-full&sslrootcert=/etc/cofre/tls/rds-ca.pem",
        "postgresql+psycopg://cofre_vault@127.0.0.1:5432/cofre",
        "postgresql+psycopg://cofre_vault@localhost/cofre",
        "postgresql+psycopg://cofre_vault@[::1]/cofre",
        "postgresql+psycopg://cofre_vault@/cofre?host=/var/run/postgresql",
    ],
)
def test_serve_takes_a_pinned_or_local_database(url: str, tmp_path: Path) -> None:
    assert "allow_empty_policy" in _checks(url, tmp_path)  # judged, and not refused
