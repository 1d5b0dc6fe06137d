"""Review 35b: the production check of the database URL (`cofre_cli._database_tls.
unverified_database`, review 35) judged the URL's text alone, while libpq takes what
the URL leaves out from the environment of the `cofre serve` process and from a
connection service file: a URL with no host (``postgresql+psycopg://cofre_vault@/cofre``)
was taken for a Unix socket and served with psycopg's default ``sslmode=prefer``
while ``PGHOST`` (or ``PGHOSTADDR``) sent it over the network; so was one naming a
``service`` (in its query or ``PGSERVICE``), whose entry in ``pg_service.conf`` names
the host. Settings and environment only: nothing connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from tests.cofre_cli.test_rev35_database_tls import _checks

_NO_HOST = "postgresql+psycopg://cofre_vault@/cofre"
_PINNED = "sslmode=verify-full&sslrootcert=/etc/cofre/tls/rds-ca.pem"


@pytest.fixture(autouse=True)
def _clean_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environment", "url", "named"),
    [
        pytest.param(
            {"PGHOST": "db.internal.example"}, _NO_HOST, "db.internal.example", id="PGHOST"
        ),
        pytest.param({"PGHOSTADDR": "10.20.30.40"}, _NO_HOST, "10.20.30.40", id="PGHOSTADDR"),
        pytest.param({}, f"{_NO_HOST}?service=vault", "the service vault", id="service-in-query"),
        pytest.param({"PGSERVICE": "vault"}, _NO_HOST, "the service vault", id="PGSERVICE"),
    ],
)
def test_finding_a_host_the_url_leaves_to_libpq_is_judged(
    environment: dict[str, str],
    url: str,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Low (fixed, review 35b): see the module text. The service file names a remote
    host here; the check does not read it (a service is judged as a network path
    unless the URL itself pins the server)."""
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text("[vault]\nhost=db.internal.example\ndbname=cofre\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        _checks(url, tmp_path)
    assert named in str(refused.value)
    assert "sslmode=verify-full" in str(refused.value)


@pytest.mark.parametrize(
    ("environment", "url"),
    [
        # The URL's own host wins over PGHOST: loopback is served as before.
        ({"PGHOST": "db.internal.example"}, "postgresql+psycopg://cofre_vault@localhost/cofre"),
        ({"PGHOST": "/var/run/postgresql"}, _NO_HOST),  # a Unix socket directory
        ({"PGHOST": "db.internal.example"}, f"{_NO_HOST}?{_PINNED}"),
        ({"PGSERVICE": "vault"}, f"{_NO_HOST}?{_PINNED}"),  # the URL's sslmode wins
        ({}, f"{_NO_HOST}?service=vault&{_PINNED}"),
        ({}, _NO_HOST),  # libpq's default socket
    ],
)
def test_a_local_or_pinned_database_is_still_served(
    environment: dict[str, str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Session 36 reads a named service's entry (a service in no file it can read is
    # refused: tests/cofre_cli/test_res36_database_tls_environment.py).
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text("[vault]\nhost=db.internal.example\ndbname=cofre\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert "allow_empty_policy" in _checks(url, tmp_path)
