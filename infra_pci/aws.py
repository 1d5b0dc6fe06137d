"""boto3 clients, and the translation of botocore errors into `InfraError`s.

IN PCI SCOPE. The only module that imports boto3/botocore (import-linter keeps the rest
of Cofre away from AWS). Nothing above this module sees a botocore exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from infra_pci.errors import AwsCallFailed, CredentialsMissing


@dataclass(frozen=True)
class AwsClients:
    ec2: Any
    logs: Any
    cloudhsm: Any

    @classmethod
    def for_region(cls, region: str) -> AwsClients:
        session = boto3.session.Session(region_name=region)
        return cls(
            ec2=session.client("ec2"),
            logs=session.client("logs"),
            cloudhsm=session.client("cloudhsmv2"),
        )


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Translate botocore errors raised inside into `InfraError` subclasses, naming
    `what` was being done and AWS's error code."""
    try:
        yield
    except (NoCredentialsError, NoRegionError) as exc:
        raise CredentialsMissing(
            f"{what}: no AWS credentials or region ({type(exc).__name__}); configure the "
            "AWS CLI profile or AWS_* variables"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AwsCallFailed(
            f"{what}: {error.get('Code', 'error')}: {error.get('Message', '')}".strip()
        ) from None
    except BotoCoreError as exc:
        raise AwsCallFailed(f"{what}: {type(exc).__name__}: {exc}") from None
