from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from infra_pci.objectstore import S3ObjectStore
from tests.support.databases import migrated_engine
from vault.signing import HSMTreeHeadSigner


@pytest.fixture
def engine(migrated_database: None, database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url) as engine:
        yield engine


@pytest.fixture
def signer(hsm_provider: HSMProvider) -> HSMTreeHeadSigner:
    return HSMTreeHeadSigner(hsm_provider, "cofre-audit-v1")


BUCKET = "cofre-audit-archive"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3ObjectStore]:
    """An S3 bucket in moto's in-process S3 (no network, no AWS account)."""
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        store = S3ObjectStore(BUCKET, region="us-east-1")
        store._client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        yield store
