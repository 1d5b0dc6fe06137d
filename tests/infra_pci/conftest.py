"""AWS, simulated: moto for EC2, CloudWatch Logs and the CloudHSM cluster control plane.

moto's cloudhsmv2 backend (5.x) has no CreateHsm/DeleteHsm (`create_hsm` raises
NotImplementedError) and reports no HSMs in DescribeClusters. Those two calls, and the
``Hsms`` list of DescribeClusters, are stubbed here with botocore event hooks, the
mechanism botocore's Stubber uses, and every stubbed response is validated against
botocore's own service model. Nothing reaches AWS; no credentials are needed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.validate import ParamValidator
from moto import mock_aws

from infra_pci.aws import AwsClients
from infra_pci.model import PciEnvironment

REGION = "us-east-1"


def _validated(model: Any, response: dict[str, Any]) -> dict[str, Any]:
    report = ParamValidator().validate(response, model.output_shape)
    if report.has_errors():
        raise AssertionError(
            f"stubbed {model.name} response breaks the model: {report.generate_report()}"
        )
    return response


class HsmStubs:
    """HSMs per cluster, behind CreateHsm/DeleteHsm and DescribeClusters.Hsms."""

    def __init__(self, client: Any) -> None:
        self.hsms: dict[str, list[dict[str, Any]]] = {}
        events = client.meta.events
        events.register("before-call.cloudhsmv2.CreateHsm", self._create)
        events.register("before-call.cloudhsmv2.DeleteHsm", self._delete)
        events.register("after-call.cloudhsmv2.DescribeClusters", self._describe)

    def _create(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[Any, Any]:
        params = json.loads(params["body"])  # the serialised request (JSON protocol)
        hsm = {
            "AvailabilityZone": params["AvailabilityZone"],
            "ClusterId": params["ClusterId"],
            "SubnetId": "subnet-stub",
            "EniIp": "10.1.1.10",
            "HsmId": f"hsm-{secrets.token_hex(6)}",
            "State": "ACTIVE",
        }
        self.hsms.setdefault(params["ClusterId"], []).append(hsm)
        return AWSResponse(None, 200, {}, None), _validated(model, {"Hsm": hsm})

    def _delete(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[Any, Any]:
        params = json.loads(params["body"])
        cluster = self.hsms.get(params["ClusterId"], [])
        self.hsms[params["ClusterId"]] = [h for h in cluster if h["HsmId"] != params["HsmId"]]
        return AWSResponse(None, 200, {}, None), _validated(model, {"HsmId": params["HsmId"]})

    def _describe(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        for cluster in parsed.get("Clusters", []):
            cluster["Hsms"] = list(self.hsms.get(cluster["ClusterId"], []))
        _validated(model, {k: v for k, v in parsed.items() if k != "ResponseMetadata"})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsClients, HsmStubs]]:
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        clients = AwsClients.for_region(REGION)
        yield clients, HsmStubs(clients.cloudhsm)


@pytest.fixture
def main_vpc(aws: tuple[AwsClients, HsmStubs]) -> str:
    ec2 = aws[0].ec2
    vpc_id: str = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_route_table(VpcId=vpc_id)
    return vpc_id


@pytest.fixture
def env(main_vpc: str) -> PciEnvironment:
    return PciEnvironment(peer_vpc_id=main_vpc, allowed_source_cidrs=("10.0.8.0/22",))


__all__ = ["boto3"]
