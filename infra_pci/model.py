"""The PCI environment, declared: what `cofre infra` builds and what it verifies.

IN PCI SCOPE (it defines the cardholder data environment's network). A dedicated VPC
with three private subnets across Availability Zones and no route to the internet,
whitelist-only security groups, interface endpoints for the AWS APIs the vault calls,
flow logs, a one-way peering to the platform's main VPC that reaches only the vault's
port, and a CloudHSM cluster with one HSM per AZ.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MANAGED_TAG = "cofre:managed"
ENVIRONMENT_TAG = "cofre:environment"
ROLE_TAG = "cofre:role"
# Where a peered VPC's subnets can be: RFC 1918 and the shared range EKS custom
# networking gives pods. An allowed source outside them is a public address.
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(c)
    for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)


class PciEnvironment(BaseSettings):
    """The declared environment. ``COFRE_INFRA_*`` variables or a TOML file
    (``cofre infra ... --config FILE``)."""

    model_config = SettingsConfigDict(env_prefix="COFRE_INFRA_", extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "cofre-pci"
    region: str = "us-east-1"
    vpc_cidr: str = "10.1.0.0/16"
    availability_zones: tuple[str, str, str] = ("us-east-1a", "us-east-1b", "us-east-1c")
    subnet_cidrs: tuple[str, str, str] = ("10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24")
    peer_vpc_id: str | None = None
    allowed_source_cidrs: tuple[str, ...] = ()
    vault_port: Annotated[int, Field(ge=1, le=65535)] = 8443
    # `s3`: the audit archive's bucket (the vault and its archive CronJobs reach it only
    # inside the VPC; docs/operations.md "Audit growth").
    endpoint_services: tuple[str, ...] = (
        "logs",
        "sts",
        "secretsmanager",
        "cloudhsmv2",
        "monitoring",
        "s3",
    )
    flow_log_group: str = "/cofre/pci/flow-logs"
    flow_log_role_arn: str = "arn:aws:iam::123456789012:role/cofre-flow-logs"
    hsm_type: str = "hsm2m.medium"
    hsms_per_az: Annotated[int, Field(ge=1, le=2)] = 1

    @model_validator(mode="after")
    def _check_network(self) -> Self:
        vpc = ipaddress.ip_network(self.vpc_cidr)
        for cidr in self.subnet_cidrs:
            if not ipaddress.ip_network(cidr).subnet_of(vpc):  # type: ignore[arg-type]
                raise ValueError(f"subnet {cidr} is outside the VPC {self.vpc_cidr}")
        if len(set(self.availability_zones)) != 3:
            raise ValueError("the three subnets must be in three different AZs")
        for cidr in self.allowed_source_cidrs:
            network = ipaddress.ip_network(cidr)
            if network.prefixlen == 0:
                raise ValueError("0.0.0.0/0 can never be an allowed source")
            # 128.0.0.0/1 is half the internet and overlaps no VPC (infra review).
            if not isinstance(network, ipaddress.IPv4Network) or not any(
                network.subnet_of(r) for r in PRIVATE_RANGES
            ):
                raise ValueError(
                    f"allowed source {cidr} is not a private IPv4 range (RFC 1918 or "
                    "100.64.0.0/10): the callers are subnets of the peered VPC"
                )
            if network.overlaps(vpc):
                raise ValueError(f"allowed source {cidr} overlaps the PCI VPC")
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> PciEnvironment:
        """Read the declaration from `path` (TOML) and the environment."""
        if path is None:
            return cls()
        with path.open("rb") as handle:
            return cls(**tomllib.load(handle))

    def tags(self, role: str, name: str) -> list[dict[str, str]]:
        return [
            {"Key": "Name", "Value": f"{self.name}-{name}"},
            {"Key": MANAGED_TAG, "Value": "true"},
            {"Key": ENVIRONMENT_TAG, "Value": self.name},
            {"Key": ROLE_TAG, "Value": role},
        ]
