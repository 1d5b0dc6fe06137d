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
    assert len(findings) == 12
    (cluster,) = clients.cloudhsm.describe_clusters()["Clusters"]
    assert cluster["Mode"] == "FIPS"


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


def test_a_cluster_not_in_fips_mode_fails_verify(aws: AWS, env: PciEnvironment) -> None:
    """Session 34: `apply` created the hsm2m.medium cluster without a mode, and `verify`
    never looked at it. A cluster's mode is set at creation and never changes
    (cluster-hsm-types.html); a QSA asks for the FIPS 140 validated mode (PCI DSS
    3.6.1.2, keys in a secure cryptographic device). A NON_FIPS cluster carrying the
    environment's tags is adopted by `apply`, so only `verify` can say so."""
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    state = provisioner.discover()
    assert state.cluster_id is not None
    subnets = list(state.subnets.values())
    tags = clients.cloudhsm.describe_clusters()["Clusters"][0]["TagList"]
    stubs = aws[1]
    hsms = stubs.hsms.pop(state.cluster_id)
    clients.cloudhsm.delete_cluster(ClusterId=state.cluster_id)
    other = clients.cloudhsm.create_cluster(
        HsmType=env.hsm_type, SubnetIds=subnets, Mode="NON_FIPS", TagList=tags
    )["Cluster"]["ClusterId"]
    stubs.hsms[other] = hsms
    failed = {f.rule: f.detail for f in verify(env, clients) if not f.ok}
    assert set(failed) == {"cloudhsm-fips-mode"}
    assert "NON_FIPS" in failed["cloudhsm-fips-mode"]


def test_verify_takes_an_hsm1_cluster_reporting_no_mode_as_fips(
    aws: AWS, env: PciEnvironment, main_vpc: str
) -> None:
    """Clusters made before June 2024 are hsm1.medium, every one FIPS, and may report
    no mode (cluster-hsm-types.html): `verify` must not fail them for it."""
    clients, _ = aws
    provisioner = PciProvisioner(env, clients)
    provisioner.apply()
    state = provisioner.discover()
    assert state.cluster_id is not None
    tags = clients.cloudhsm.describe_clusters()["Clusters"][0]["TagList"]
    stubs = aws[1]
    hsms = stubs.hsms.pop(state.cluster_id)
    clients.cloudhsm.delete_cluster(ClusterId=state.cluster_id)
    other = clients.cloudhsm.create_cluster(
        HsmType="hsm1.medium", SubnetIds=list(state.subnets.values()), TagList=tags
    )["Cluster"]
    stubs.hsms[other["ClusterId"]] = hsms
    assert PciProvisioner(env, clients).discover().cluster_mode == "FIPS"


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


def _half_internet() -> list[dict[str, str]]:
    return [{"CidrIp": "0.0.0.0/1"}, {"CidrIp": "128.0.0.0/1"}]


def test_half_internet_rules_and_routes_are_open(aws: AWS, env: PciEnvironment) -> None:
    """0.0.0.0/1 and 128.0.0.0/1 together are 0.0.0.0/0: matching the string "0.0.0.0/0"
    let both past no-open-ingress, no-open-egress and no-internet-route (infra review)."""
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    endpoints = state.security_groups["endpoints"]
    clients.ec2.authorize_security_group_ingress(
        GroupId=endpoints,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": _half_internet()}
        ],
    )
    clients.ec2.authorize_security_group_egress(
        GroupId=endpoints, IpPermissions=[{"IpProtocol": "-1", "IpRanges": _half_internet()}]
    )
    igw = clients.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    for half in ("0.0.0.0/1", "128.0.0.0/1"):
        clients.ec2.create_route(
            RouteTableId=state.route_table_id, DestinationCidrBlock=half, GatewayId=igw
        )
    assert {"no-open-ingress", "no-open-egress", "no-internet-route"} <= _failed(env, clients)


def test_database_and_hsm_reachable_only_from_inside_the_vpc(
    aws: AWS, env: PciEnvironment, main_vpc: str
) -> None:
    """The adapter tier's subnets are routed to the vault subnets, where RDS and the HSM
    ENIs live too: a database or HSM group admitting the main VPC lets the out-of-scope
    tier reach them past the vault (infra review: no rule looked beyond 0.0.0.0/0)."""
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    ec2 = clients.ec2

    def group(name: str) -> str:
        group_id: str = ec2.create_security_group(
            GroupName=name, Description=name, VpcId=state.vpc_id
        )["GroupId"]
        ec2.revoke_security_group_egress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
        return group_id

    # As CloudHSM and an operator's RDS set them up: from inside the VPC only.
    hsm, database = group("cloudhsm-cluster-sg"), group("rds")
    ec2.authorize_security_group_ingress(
        GroupId=hsm,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 2223,
                "ToPort": 2225,
                "UserIdGroupPairs": [{"GroupId": hsm}],
            }
        ],
    )
    ec2.authorize_security_group_ingress(
        GroupId=database,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 5432,
                "ToPort": 5432,
                "UserIdGroupPairs": [{"GroupId": state.security_groups["vault"]}],
                "IpRanges": [{"CidrIp": env.subnet_cidrs[0]}],
            }
        ],
    )
    assert _failed(env, clients) == set()
    adapters = ec2.create_security_group(GroupName="adapters", Description="a", VpcId=main_vpc)
    ec2.authorize_security_group_ingress(
        GroupId=database,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 5432,
                "ToPort": 5432,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
            }
        ],
    )
    ec2.authorize_security_group_ingress(
        GroupId=hsm,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 2223,
                "ToPort": 2225,
                "UserIdGroupPairs": [{"GroupId": adapters["GroupId"]}],
            }
        ],
    )
    findings = {f.rule: f for f in verify(env, clients)}
    assert not findings["no-outside-ingress"].ok
    assert "10.0.0.0/8" in findings["no-outside-ingress"].detail
    assert adapters["GroupId"] in findings["no-outside-ingress"].detail


def test_flow_logs_that_deliver_nothing(aws: AWS, env: PciEnvironment) -> None:
    """A flow log whose role cannot write (the placeholder role ARN, a deleted log group)
    is ACTIVE and delivers nothing: DeliverLogsStatus FAILED (infra review)."""
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    clients.ec2.delete_flow_logs(FlowLogIds=[state.flow_log_id])
    clients.ec2.create_flow_logs(
        ResourceIds=[state.vpc_id],
        ResourceType="VPC",
        TrafficType="ALL",
        LogDestinationType="cloud-watch-logs",
        LogGroupName="/cofre/pci/no-such-group",
        DeliverLogsPermissionArn=env.flow_log_role_arn,
    )
    (flow_log,) = clients.ec2.describe_flow_logs(
        Filters=[{"Name": "resource-id", "Values": [state.vpc_id]}]
    )["FlowLogs"]
    assert (flow_log["FlowLogStatus"], flow_log["DeliverLogsStatus"]) == ("ACTIVE", "FAILED")
    assert "flow-logs" in _failed(env, clients)


@pytest.mark.parametrize("target", ["vpn-gateway", "transit-gateway"])
def test_pci_side_routes_leave_only_over_the_peering(
    aws: AWS, env: PciEnvironment, target: str
) -> None:
    """A route to a private range through a VPN or transit gateway is a path out of the
    CDE that no rule saw: peering-routes looked only at routes over a peering."""
    clients, provisioner = _applied(aws, env)
    state = provisioner.discover()
    ec2 = clients.ec2
    if target == "vpn-gateway":
        gateway = ec2.create_vpn_gateway(Type="ipsec.1")["VpnGateway"]["VpnGatewayId"]
        ec2.attach_vpn_gateway(VpcId=state.vpc_id, VpnGatewayId=gateway)
        via: dict[str, str] = {"GatewayId": gateway}
    else:
        via = {
            "TransitGatewayId": ec2.create_transit_gateway()["TransitGateway"]["TransitGatewayId"]
        }
    ec2.create_route(
        RouteTableId=state.route_table_id, DestinationCidrBlock="192.168.0.0/16", **via
    )
    assert "peering-routes" in _failed(env, clients)
