"""S3 as the audit archive's object store (`audit.archive.ObjectStore`).

IN PCI SCOPE. Credentials come from boto3's default chain (the pod's IRSA role, an
instance profile, ``AWS_*`` variables), never from Cofre's settings or command line.
`endpoint_url` points at an S3-compatible endpoint (a VPC endpoint, MinIO, or moto's
server in tests). botocore errors leave as `InfraError`s, through `aws_errors`.
"""

from __future__ import annotations

from typing import IO, Any

import boto3
from botocore.exceptions import ClientError

from infra_pci.aws import aws_errors

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


class S3ObjectStore:
    """One bucket. Objects are written once (the archive never overwrites)."""

    def __init__(
        self, bucket: str, *, region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        self.bucket = bucket
        session = boto3.session.Session(region_name=region)
        self._client: Any = session.client("s3", endpoint_url=endpoint_url)

    def put_file(self, key: str, source: IO[bytes]) -> None:
        """Upload `source` (from its current position) as `key`; multipart when large."""
        with aws_errors(f"upload s3://{self.bucket}/{key}"):
            self._client.upload_fileobj(source, self.bucket, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with aws_errors(f"upload s3://{self.bucket}/{key}"):
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json"
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
