"""The audit archive's S3 endpoint (note 37): the archive and retire CronJobs and the
vault reach the bucket only through an S3 interface endpoint in the PCI VPC (their
NetworkPolicies open 443 to the VPC's block alone, no public S3 address), yet `cofre
infra` made STS's and the others but not S3's: on an environment it built, every hourly
archive run failed until someone added one by hand. Simulated AWS (moto, see conftest)."""

from __future__ import annotations

from infra_pci.aws import AwsClients
from infra_pci.model import PciEnvironment
from infra_pci.provision import PciProvisioner
from infra_pci.verify import verify
from tests.infra_pci.conftest import HsmStubs


def test_the_archive_bucket_is_reached_through_an_endpoint_cofre_infra_makes(
    aws: tuple[AwsClients, HsmStubs], env: PciEnvironment
) -> None:
    clients, _ = aws
    assert "s3" in PciEnvironment().endpoint_services  # the default, not only this test's
    provisioner = PciProvisioner(env, clients)
    _, next_steps = provisioner.apply()
    endpoints = {
        e["ServiceName"].rsplit(".", 1)[-1]: e
        for e in clients.ec2.describe_vpc_endpoints()["VpcEndpoints"]
    }
    s3 = endpoints["s3"]
    assert s3["VpcEndpointType"] == "Interface"
    # Reached by the endpoint's own name (`[archive] endpoint_url`), as the ConfigMap
    # does: S3's private DNS on an interface endpoint is not what the manifests use.
    assert s3["PrivateDnsEnabled"] is False
    assert all(e["PrivateDnsEnabled"] for name, e in endpoints.items() if name != "s3")
    step = next(s for s in next_steps if "endpoint_url" in s)
    assert s3["VpcEndpointId"] in step
    assert all(f.ok for f in verify(env, clients))
