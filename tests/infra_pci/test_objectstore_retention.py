"""PCI DSS 10.5.1 on the archive bucket: `S3ObjectStore.require_retention` refuses a
bucket that cannot keep `COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS` (no Object Lock, or a
lifecycle rule that expires the archive sooner), and every object put after it carries
a COMPLIANCE-mode retention until upload time + those months.

AWS's S3 control plane is simulated by moto's in-process S3 (no network, no account),
like every AWS control plane in this suite. moto stores and reports an object's lock
mode and retain-until date, but does not enforce them (it lets a locked version be
deleted), so what these tests prove is what Cofre asks S3 for, not that S3 keeps it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from moto import mock_aws

from infra_pci.errors import ArchiveBucketUnfit
from infra_pci.objectstore import S3ObjectStore, add_months

LOCKED = "cofre-audit-locked"
PLAIN = "cofre-audit-plain"
PREFIX = "cofre-audit/"
UPLOADED = datetime(2026, 12, 5, 3, 40, 7, tzinfo=UTC)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        store = S3ObjectStore(LOCKED, region="us-east-1")
        store._client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
        store._client.create_bucket(Bucket=PLAIN)
        yield store._client


def _store(bucket: str) -> S3ObjectStore:
    return S3ObjectStore(bucket, region="us-east-1", clock=lambda: UPLOADED)


def _expire(client: Any, bucket: str, rule: dict[str, Any]) -> None:
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={"Rules": [{"ID": "r1", "Status": "Enabled", **rule}]},
    )


def test_a_bucket_without_object_lock_is_refused(s3: Any) -> None:
    store = _store(PLAIN)
    with pytest.raises(ArchiveBucketUnfit) as caught:
        store.require_retention(12, PREFIX)
    assert caught.value.code == "archive_bucket_unfit"
    assert str(caught.value) == (
        f"bucket {PLAIN} has no S3 Object Lock: it cannot keep the audit archive for "
        "COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS=12 months (create it with "
        "--object-lock-enabled-for-bucket; docs/operations.md, 'The bucket')"
    )


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        (
            {"Filter": {"Prefix": "cofre-audit/"}, "Expiration": {"Days": 90}},
            "lifecycle rule r1 expires cofre-audit/ objects after 90 days",
        ),
        (
            {"Filter": {"Prefix": ""}, "Expiration": {"Days": 364}},
            "lifecycle rule r1 expires cofre-audit/ objects after 364 days",
        ),
        (
            {"Filter": {"Prefix": "cofre-audit/segments/"}, "Expiration": {"Days": 30}},
            "lifecycle rule r1 expires cofre-audit/ objects after 30 days",
        ),
        (
            {
                "Filter": {"Prefix": "cofre"},
                "Expiration": {"Date": datetime(2027, 6, 1, tzinfo=UTC)},
            },
            "lifecycle rule r1 expires cofre-audit/ objects on 2027-06-01",
        ),
    ],
)
def test_a_lifecycle_rule_shorter_than_the_retention_is_refused(
    s3: Any, rule: dict[str, Any], why: str
) -> None:
    _expire(s3, LOCKED, rule)
    with pytest.raises(ArchiveBucketUnfit) as caught:
        _store(LOCKED).require_retention(12, PREFIX)
    assert str(caught.value) == (
        f"bucket {LOCKED}: {why}, before COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS=12 months "
        "(until 2027-12-05); lengthen or remove the rule (docs/operations.md, 'The bucket')"
    )


@pytest.mark.parametrize(
    "rule",
    [
        {"Filter": {"Prefix": "cofre-audit/"}, "Expiration": {"Days": 397}},
        {"Filter": {"Prefix": "other/"}, "Expiration": {"Days": 1}},
        {"Filter": {"Prefix": "cofre-audit/"}, "Expiration": {"Days": 1}, "Status": "Disabled"},
        {
            "Filter": {"Prefix": "cofre-audit/"},
            "Transitions": [{"Days": 90, "StorageClass": "GLACIER_IR"}],
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        },
    ],
)
def test_a_lifecycle_rule_that_keeps_the_retention_is_accepted(
    s3: Any, rule: dict[str, Any]
) -> None:
    _expire(s3, LOCKED, rule)
    _store(LOCKED).require_retention(12, PREFIX)


def test_objects_put_after_the_check_are_locked_in_compliance_mode(s3: Any) -> None:
    store = _store(LOCKED)
    store.require_retention(12, PREFIX)
    store.put_file(f"{PREFIX}segments/0-8.jsonl.gz", io.BytesIO(b"segment"))
    store.put_bytes(f"{PREFIX}manifests/0-8.json", b"{}")
    for key in (f"{PREFIX}segments/0-8.jsonl.gz", f"{PREFIX}manifests/0-8.json"):
        head = s3.head_object(Bucket=LOCKED, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] == datetime(2027, 12, 5, 3, 40, 7, tzinfo=UTC)


def test_without_the_check_objects_are_put_as_before(s3: Any) -> None:
    # verify-archive and retire only read; only `cofre audit archive` asks for retention.
    store = _store(PLAIN)
    store.put_bytes(f"{PREFIX}manifests/0-8.json", b"{}")
    assert "ObjectLockMode" not in s3.head_object(Bucket=PLAIN, Key=f"{PREFIX}manifests/0-8.json")


@pytest.mark.parametrize(
    ("start", "months", "until"),
    [
        (datetime(2026, 12, 5, tzinfo=UTC), 12, datetime(2027, 12, 5, tzinfo=UTC)),
        (datetime(2027, 1, 31, tzinfo=UTC), 13, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2028, 2, 29, tzinfo=UTC), 12, datetime(2029, 2, 28, tzinfo=UTC)),
        (datetime(2026, 3, 31, 23, 59, tzinfo=UTC), 18, datetime(2027, 9, 30, 23, 59, tzinfo=UTC)),
    ],
)
def test_months_are_calendar_months(start: datetime, months: int, until: datetime) -> None:
    assert add_months(start, months) == until
