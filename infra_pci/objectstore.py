"""S3 as the audit archive's object store (`audit.archive.ObjectStore`).

IN PCI SCOPE. Credentials come from boto3's default chain (the pod's IRSA role, an
instance profile, ``AWS_*`` variables), never from Cofre's settings or command line.
`endpoint_url` points at an S3-compatible endpoint (a VPC endpoint, MinIO, or moto's
server in tests). botocore errors leave as `InfraError`s, through `aws_errors`.

PCI DSS 10.5.1 (twelve months of audit history): `require_retention` checks, before
anything is shipped, that the bucket can keep the archive that long (S3 Object Lock
enabled; no enabled lifecycle rule expiring the archive's keys sooner) and raises
`ArchiveBucketUnfit` otherwise; every object put afterwards carries its own
COMPLIANCE-mode retention until upload time + the months, so the history is kept even
if the bucket's default retention is shorter, missing or later changed.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Final

import boto3
from botocore.exceptions import ClientError

from infra_pci.aws import aws_errors
from infra_pci.errors import ArchiveBucketUnfit

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# docs/operations.md, "The bucket": compliance mode, which nobody (root included) can
# shorten or lift; governance mode can be bypassed by a role holding
# s3:BypassGovernanceRetention.
LOCK_MODE: Final = "COMPLIANCE"
_SETTING: Final = "COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS"
_SEE: Final = "docs/operations.md, 'The bucket'"


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` plus calendar `months`, the day clamped to the month's last (Jan 31 + 1
    is Feb 28 or 29): what "twelve months" means in 10.5.1, not 12 x 30 days."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _rule_prefix(rule: dict[str, Any]) -> str:
    # The filter as S3 returns it: Filter.Prefix, Filter.And.Prefix, or the legacy
    # top-level Prefix. A rule filtered only by tags or size is taken to apply (its
    # prefix is ""): refusing a bucket wrongly is cheaper than losing history.
    found = rule.get("Filter", {})
    prefix = found.get("Prefix", found.get("And", {}).get("Prefix", rule.get("Prefix", "")))
    return str(prefix or "")


class S3ObjectStore:
    """One bucket. Objects are written once (the archive never overwrites)."""

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bucket = bucket
        session = boto3.session.Session(region_name=region)
        self._client: Any = session.client("s3", endpoint_url=endpoint_url)
        self._clock = clock
        self._retain_months: int | None = None

    def require_retention(self, months: int, prefix: str) -> None:
        """Raise `ArchiveBucketUnfit` unless the bucket can keep objects under `prefix`
        for `months` (Object Lock enabled, no enabled lifecycle rule expiring them
        sooner); then lock every object this store puts for `months` from its upload."""
        now = self._clock()
        until = add_months(now, months)
        setting = f"{_SETTING}={months} months"
        with aws_errors(f"read the Object Lock configuration of s3://{self.bucket}"):
            try:
                lock = self._client.get_object_lock_configuration(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != (
                    "ObjectLockConfigurationNotFoundError"
                ):
                    raise
                lock = {}
        if lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise ArchiveBucketUnfit(
                f"bucket {self.bucket} has no S3 Object Lock: it cannot keep the audit archive "
                f"for {setting} (create it with --object-lock-enabled-for-bucket; {_SEE})"
            )
        with aws_errors(f"read the lifecycle configuration of s3://{self.bucket}"):
            try:
                rules = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                rules = {}
        for rule in rules.get("Rules", []):
            short = self._expires_sooner(rule, prefix, now, until)
            if short:
                raise ArchiveBucketUnfit(
                    f"bucket {self.bucket}: lifecycle rule {rule.get('ID', '(no id)')} expires "
                    f"{prefix or 'the'} objects {short}, before {setting} "
                    f"(until {until:%Y-%m-%d}); lengthen or remove the rule ({_SEE})"
                )
        self._retain_months = months

    @staticmethod
    def _expires_sooner(
        rule: dict[str, Any], prefix: str, now: datetime, until: datetime
    ) -> str | None:
        """How `rule` expires current objects under `prefix` before `until`, or None.
        Noncurrent-version expiry and transitions are not checked: the archive never
        overwrites, and a colder class still keeps the object."""
        expiration = rule.get("Expiration", {})
        theirs = _rule_prefix(rule)
        if rule.get("Status") != "Enabled" or not (
            prefix.startswith(theirs) or theirs.startswith(prefix)
        ):
            return None
        days = expiration.get("Days")
        # S3 counts Days from the object's creation (rounded up to the next midnight UTC).
        if days is not None and now.timestamp() + int(days) * 86400 < until.timestamp():
            return f"after {days} days"
        date = expiration.get("Date")
        if isinstance(date, datetime) and date < until:
            return f"on {date:%Y-%m-%d}"
        return None

    def _lock(self) -> dict[str, Any]:
        """The retention arguments of an upload: none until `require_retention`."""
        if self._retain_months is None:
            return {}
        until = add_months(self._clock(), self._retain_months)
        return {"ObjectLockMode": LOCK_MODE, "ObjectLockRetainUntilDate": until}

    def put_file(self, key: str, source: IO[bytes]) -> None:
        """Upload `source` (from its current position) as `key`; multipart when large."""
        with aws_errors(f"upload s3://{self.bucket}/{key}"):
            self._client.upload_fileobj(source, self.bucket, key, ExtraArgs=self._lock())

    def put_bytes(self, key: str, data: bytes) -> None:
        with aws_errors(f"upload s3://{self.bucket}/{key}"):
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/json",
                **self._lock(),
            )

    def get_file(self, key: str, out: IO[bytes]) -> bool:
        """Write object `key` to `out`; False when there is no such object."""
        try:
            with aws_errors(f"download s3://{self.bucket}/{key}"):
                try:
                    self._client.download_fileobj(self.bucket, key, out)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in _MISSING:
                        return False
                    raise
        finally:
            out.seek(0)
        return True

    def get_bytes(self, key: str) -> bytes | None:
        """Object `key`'s content; None when there is no such object."""
        with aws_errors(f"download s3://{self.bucket}/{key}"):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING:
                    return None
                raise
            body: bytes = response["Body"].read()
        return body

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`."""
        keys: list[str] = []
        with aws_errors(f"list s3://{self.bucket}/{prefix}"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        return keys
