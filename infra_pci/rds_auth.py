"""RDS IAM database authentication: short-lived connection tokens signed with the pod's
AWS credentials (IRSA on EKS), so no database password exists anywhere.

IN PCI SCOPE. Like every AWS call, it goes through boto3 here only (import-linter). A
token is a SigV4-presigned request computed locally by botocore, valid for 15 minutes
for new connections; the vault asks for one per new pooled connection.
"""

from __future__ import annotations

from collections.abc import Callable

import boto3

from infra_pci.aws import aws_errors


def rds_auth_token_provider(host: str, port: int, user: str, region: str) -> Callable[[], str]:
    """Return a function that makes a fresh IAM auth token for `user` at `host`:`port`.

    The function raises `InfraError` (code aws_credentials_missing or aws_call_failed)
    when no credentials are available.
    """
    client = boto3.session.Session(region_name=region).client("rds")

    def token() -> str:
        with aws_errors("generate an RDS IAM authentication token"):
            return str(
                client.generate_db_auth_token(
                    DBHostname=host, Port=port, DBUsername=user, Region=region
                )
            )

    return token
