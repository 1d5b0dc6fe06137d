"""`cofre infra`, atk49h: the PCI VPC's interface endpoints are no way out of it.

The PCI VPC has no route to the internet (`no-internet-route`); what leaves it goes
through the interface endpoints `apply` makes (logs, sts, secretsmanager, cloudhsmv2,
monitoring, s3), which every host of the VPC reaches on 443 (the `endpoints` group).
They were made with no policy, so AWS gave each the default one, `Allow` `*` to every
principal on every resource: anyone in the CDE holding credentials of *any* AWS account
(their own) wrote what they liked to their own S3 bucket, log group or secret through
them, and `verify` passed. PCI DSS 1.3.2 (outbound traffic from the CDE restricted to
what is necessary) and 1.4.1; AWS's own guidance for a data perimeter is an endpoint
policy limited to the account's principals (aws:PrincipalAccount). STS also serves the
IRSA exchange (AssumeRoleWithWebIdentity), whose caller has no AWS account: its policy
admits that action for the account's own roles alone.
"""

from __future__ import annotations

import json
from typing import Any

from infra_pci.aws import AwsClients
from infra_pci.model import PciEnvironment
from infra_pci.provision import PciProvisioner
from infra_pci.verify import verify
from tests.infra_pci.conftest import HsmStubs

AWS = tuple[AwsClients, HsmStubs]
OPEN = {
    "Version": "2008-10-17",
    "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}],
}


def _endpoints(clients: AwsClients, vpc_id: str) -> list[dict[str, Any]]:
    return clients.ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
        "VpcEndpoints"
    ]


def _account(clients: AwsClients, vpc_id: str) -> str:
    return str(clients.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["OwnerId"])


def _failed(env: PciEnvironment, clients: AwsClients) -> set[str]:
    return {f.rule for f in verify(env, clients) if not f.ok}


def test_every_endpoint_admits_the_account_s_principals_alone(
    aws: AWS, env: PciEnvironment
) -> None:
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    vpc_id = provisioner.discover().vpc_id
    assert vpc_id is not None
    account = _account(clients, vpc_id)
    endpoints = _endpoints(clients, vpc_id)
    assert len(endpoints) == len(env.endpoint_services)
    for endpoint in endpoints:
        service = endpoint["ServiceName"].rsplit(".", 1)[-1]
        policy = json.loads(endpoint["PolicyDocument"])
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", (service, statement)
            condition = statement.get("Condition", {}).get("StringEquals", {})
            if condition.get("aws:PrincipalAccount") == account:
                continue
            # IRSA: the web-identity exchange, for this account's roles only
            assert service == "sts", (service, statement)
            assert statement["Action"] == "sts:AssumeRoleWithWebIdentity", statement
            assert statement["Resource"] == f"arn:aws:iam::{account}:role/*", statement


def test_verify_fails_an_endpoint_open_to_every_account(aws: AWS, env: PciEnvironment) -> None:
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    state = provisioner.discover()
    assert _failed(env, clients) == set()
    clients.ec2.modify_vpc_endpoint(
        VpcEndpointId=state.endpoints["s3"], PolicyDocument=json.dumps(OPEN)
    )
    assert _failed(env, clients) == {"vpc-endpoint-policies"}


def test_apply_closes_an_existing_open_endpoint(aws: AWS, env: PciEnvironment) -> None:
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    state = provisioner.discover()
    clients.ec2.modify_vpc_endpoint(
        VpcEndpointId=state.endpoints["logs"], PolicyDocument=json.dumps(OPEN)
    )
    assert any(c.action == "+" and c.kind == "endpoint-policy" for c in provisioner.plan())
    provisioner.apply()
    assert _failed(env, clients) == set()
    assert all(c.action == "=" for c in provisioner.plan())
