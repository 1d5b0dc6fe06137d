"""Errors of the infra_pci package; botocore errors are translated here, at the edge.

IN PCI SCOPE.

    CofreError
    └── InfraError
        ├── AwsCallFailed          an AWS API call failed (service, operation, AWS code)
        ├── ArchiveBucketUnfit     the audit archive bucket cannot keep the total retention
        ├── CredentialsMissing     no AWS credentials or region
        └── PeerVpcNotFound        the declared peer VPC does not exist
"""

from __future__ import annotations

from cofre.errors import CofreError


class InfraError(CofreError):
    code = "infra_error"


class AwsCallFailed(InfraError):
    code = "aws_call_failed"


class ArchiveBucketUnfit(InfraError):
    """No Object Lock on the audit archive bucket, or a lifecycle rule expiring the
    archive before `COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS` (PCI DSS 10.5.1)."""

    code = "archive_bucket_unfit"


class CredentialsMissing(InfraError):
    code = "aws_credentials_missing"


class PeerVpcNotFound(InfraError):
    code = "peer_vpc_not_found"
