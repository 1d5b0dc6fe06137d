"""RDS IAM authentication: a fresh token per new connection, made by boto3 under moto
(the token is a locally presigned request; nothing reaches AWS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from moto import mock_aws
from sqlalchemy import event

from cofre.errors import ConfigurationError
from cofre.settings import Settings
from cofre_cli._opening import database_engine
from infra_pci.errors import CredentialsMissing
from infra_pci.rds_auth import rds_auth_token_provider


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def test_token_is_a_presigned_connect_request(aws: None) -> None:
    token = rds_auth_token_provider("db.internal", 5432, "cofre_vault", "eu-west-1")()
    parts = urlsplit("https://" + token)
    query = parse_qs(parts.query)
    assert parts.netloc == "db.internal:5432"
    assert query["Action"] == ["connect"]
    assert query["DBUser"] == ["cofre_vault"]
    assert query["X-Amz-Expires"] == ["900"]
    assert "eu-west-1/rds-db/aws4_request" in query["X-Amz-Credential"][0]


def test_each_new_connection_gets_a_fresh_token(aws: None, pg_database: str) -> None:
    settings = Settings.model_validate(
        {"database": {"url": pg_database, "iam_auth": True, "iam_region": "eu-west-1"}}
    )
    engine = database_engine(settings, pool_size=1)
    passwords: list[str] = []

    @event.listens_for(engine, "do_connect")
    def _seen(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        passwords.append(cparams["password"])

    try:
        with engine.connect() as first, engine.connect() as second:
            assert first.execute(sa.text("SELECT 1")).scalar() == 1
            assert second.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert len(passwords) == 2
    assert all("Action=connect" in p and "DBUser=postgres" in p for p in passwords)


def test_missing_credentials_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = rds_auth_token_provider("db.internal", 5432, "cofre_vault", "eu-west-1")
    with pytest.raises(CredentialsMissing):
        provider()


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("", True),
        ("?sslmode=require", True),
        ("?sslmode=prefer", True),
        ("?sslmode=verify-full", False),
    ],
)
def test_an_iam_token_goes_only_over_a_verified_server(
    aws: None, query: str, refused: bool
) -> None:
    """The infra review: the 15-minute token is a bearer credential, and psycopg's default
    sslmode ("prefer") lets anyone in the path who answers without TLS, or with a
    certificate of its own, take it. Only the docs asked for verify-full."""
    url = f"postgresql://cofre_vault@db.internal:5432/cofre{query}"
    settings = Settings.model_validate(
        {"database": {"url": url, "iam_auth": True, "iam_region": "eu-west-1"}}
    )
    if refused:
        with pytest.raises(ConfigurationError, match="verify-full"):
            database_engine(settings)
    else:
        database_engine(settings).dispose()  # made, not connected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://cofre_vault@localhost:5432/cofre?host=db.evil.example",
        "postgresql://cofre_vault@localhost:5432/cofre?hostaddr=203.0.113.7",
        "postgresql://cofre_vault@db.internal:5432/cofre?sslmode=verify-full&host=10.9.9.9",
    ],
)
def test_an_iam_token_goes_to_the_host_the_url_names(aws: None, url: str) -> None:
    """The attack review: libpq takes `host`/`hostaddr` from the query over the URL's
    host, so a loopback URL (the development exception to verify-full) with
    ``?host=<remote>`` sent the token unverified elsewhere, and the token was minted
    for a host it never went to."""
    settings = Settings.model_validate(
        {"database": {"url": url, "iam_auth": True, "iam_region": "eu-west-1"}}
    )
    with pytest.raises(ConfigurationError, match="host"):
        database_engine(settings)
