"""plan / apply / verify / destroy against simulated AWS (moto; see conftest)."""

from __future__ import annotations

import pytest

from infra_pci.aws import AwsClients, aws_errors
from infra_pci.errors import AwsCallFailed, PeerVpcNotFound
from infra_pci.model import PciEnvironment
from infra_pci.provision import PciProvisioner
from infra_pci.verify import verify
from tests.infra_pci.conftest import HsmStubs

AWS = tuple[AwsClients, HsmStubs]


def _failed(env: PciEnvironment, clients: AwsClients) -> set[str]:
    return {f.rule for f in verify(env, clients) if not f.ok}


def test_plan_apply_idempotent_verify(aws: AWS, env: PciEnvironment) -> None:
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    plan = provisioner.plan()
    assert plan
    assert all(c.action == "+" for c in plan)
    kinds = [c.kind for c in plan]
    assert kinds.count("subnet") == 3
    assert kinds.count("cloudhsm-hsm") == 3
    assert kinds.count("vpc-endpoint") == len(env.endpoint_services)
    assert {"vpc", "route-table", "flow-log", "vpc-peering", "cloudhsm-cluster"} <= set(kinds)
    assert clients.ec2.describe_vpcs()["Vpcs"][-1]["CidrBlock"] != env.vpc_cidr  # touched nothing
    changes, next_steps = provisioner.apply()
    assert [str(c) for c in changes] == [str(c) for c in plan]
    assert any("initialize-cluster" in step for step in next_steps)
    assert all(c.action == "=" for c in provisioner.plan())
    again, _ = provisioner.apply()
    assert again == []
    findings = verify(env, clients)
    assert all(f.ok for f in findings), [str(f) for f in findings]
    assert len(findings) == 9


def _applied(aws: AWS, env: PciEnvironment) -> tuple[AwsClients, PciProvisioner]:
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    assert _failed(env, clients) == set()
    return clients, provisioner


def test_internet_gateway_attached(aws: AWS, env: PciEnvironment) -> None:
    clients, provisioner = _applied(aws, env)
    vpc_id = provisioner.discover().vpc_id
    igw = clients.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    clients.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
    assert "no-internet-gateway" in _failed(env, clients)


def test_open_ingress_rule(aws: AWS, env: PciEnvironment) -> None:
    clients, provisioner = _applied(aws, env)
    group = provisioner.discover().security_groups["vault"]
    clients.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    assert {"no-open-ingress", "vault-ingress-whitelist"} <= _failed(env, clients)


def test_open_egress_rule(aws: AWS, env: PciEnvironment) -> None:
    clients, provisioner = _applied(aws, env)
    group = provisioner.discover().security_groups["vault"]
    clients.ec2.authorize_security_group_egress(
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    assert "no-open-egress" in _failed(env, clients)


def test_route_to_the_internet(aws: AWS, env: PciEnvironment) -> None:
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    igw = clients.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    clients.ec2.create_route(
        RouteTableId=state.route_table_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw
    )
    assert "no-internet-route" in _failed(env, clients)


def test_flow_logs_removed(aws: AWS, env: PciEnvironment) -> None:
    clients, provisioner = _applied(aws, env)
    flow_log = provisioner.discover().flow_log_id
    clients.ec2.delete_flow_logs(FlowLogIds=[flow_log])
    assert "flow-logs" in _failed(env, clients)


def test_peering_route_beyond_vault_subnets(aws: AWS, env: PciEnvironment, main_vpc: str) -> None:
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    table = clients.ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [main_vpc]}])[
        "RouteTables"
    ][0]
    clients.ec2.create_route(
        RouteTableId=table["RouteTableId"],
        DestinationCidrBlock="10.1.0.0/16",
        VpcPeeringConnectionId=state.peering_id,
    )
    assert "peering-routes" in _failed(env, clients)


def test_hsm_lost_in_one_az(aws: AWS, env: PciEnvironment) -> None:
    clients, stubs = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    cluster = provisioner.discover().cluster_id
    assert cluster is not None
    stubs.hsms[cluster] = stubs.hsms[cluster][:2]
    assert "cloudhsm-three-azs" in _failed(env, clients)
    assert [c.kind for c in provisioner.plan() if c.action == "+"] == ["cloudhsm-hsm"]


def test_destroy_removes_only_what_it_tagged(aws: AWS, env: PciEnvironment, main_vpc: str) -> None:
    clients, provisioner = _applied(aws, env)
    removed = provisioner.destroy()
    assert {c.kind for c in removed} >= {"vpc", "subnet", "security-group", "cloudhsm-cluster"}
    vpcs = [v["VpcId"] for v in clients.ec2.describe_vpcs()["Vpcs"]]
    assert main_vpc in vpcs
    assert provisioner.discover().vpc_id is None
    assert all(c.action == "+" for c in provisioner.plan())


def test_missing_peer_vpc(aws: AWS) -> None:
    env = PciEnvironment(peer_vpc_id="vpc-0123456789abcdef0", allowed_source_cidrs=("10.0.8.0/22",))
    with pytest.raises(PeerVpcNotFound):
        PciProvisioner(env, aws[0]).apply()


def test_aws_errors_are_translated(aws: AWS) -> None:
    with pytest.raises(AwsCallFailed, match=r"InvalidVpcID|InvalidVpc"), aws_errors("reading"):
        aws[0].ec2.delete_vpc(VpcId="vpc-00000000")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allowed_source_cidrs": ("0.0.0.0/0",)}, "never be an allowed source"),
        # Half the internet does not overlap the VPC and its prefix is not 0 (infra review).
        ({"allowed_source_cidrs": ("128.0.0.0/1",)}, "private"),
        ({"allowed_source_cidrs": ("8.8.8.0/24",)}, "private"),
        ({"allowed_source_cidrs": ("fd00::/8",)}, "private"),
        ({"allowed_source_cidrs": ("10.1.0.0/24",)}, "overlaps"),
        ({"subnet_cidrs": ("10.2.1.0/24", "10.1.2.0/24", "10.1.3.0/24")}, "outside"),
        ({"availability_zones": ("a", "a", "b")}, "different AZs"),
    ],
)
def test_declaration_rejects_unsafe_networks(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PciEnvironment(**kwargs)  # type: ignore[arg-type]
