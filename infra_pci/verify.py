"""`cofre infra verify`: read the live account and check the PCI rules.

IN PCI SCOPE. Each rule has a stable name that the report and the tests use:

- ``no-internet-gateway``: no internet gateway attached to the PCI VPC;
- ``no-internet-route``: no route to 0.0.0.0/0 or ::/0 (internet or NAT gateway) in any
  route table of the PCI VPC;
- ``no-open-ingress``: no security group rule admits 0.0.0.0/0;
- ``no-open-egress``: no security group allows egress to 0.0.0.0/0;
- ``vault-ingress-whitelist``: the vault group admits only the vault port, only from the
  declared peer CIDRs;
- ``flow-logs``: flow logs capture all traffic of the VPC;
- ``peering-routes``: routes over the peering reach only the allowed sources (PCI side)
  and only the vault subnets (main side);
- ``vpc-endpoints``: an interface endpoint exists for every AWS API the vault calls;
- ``cloudhsm-three-azs``: the CloudHSM cluster has HSMs in three Availability Zones.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from infra_pci.aws import AwsClients, aws_errors
from infra_pci.model import PciEnvironment
from infra_pci.provision import PciProvisioner, State

OPEN = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Finding:
    rule: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.rule:<24} {self.detail}"


def _ranges(permission: dict[str, Any]) -> list[str]:
    return [r["CidrIp"] for r in permission.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])
    ]


def verify(env: PciEnvironment, clients: AwsClients) -> list[Finding]:
    """Return one finding per rule (all rules are checked even after a failure)."""
    state = PciProvisioner(env, clients).discover()
    if state.vpc_id is None:
        return [Finding("vpc-exists", False, f"no VPC tagged for {env.name}")]
    ec2 = clients.ec2
    with aws_errors("reading the PCI VPC for verification"):
        in_vpc = [{"Name": "vpc-id", "Values": [state.vpc_id]}]
        gateways = ec2.describe_internet_gateways(
            Filters=[{"Name": "attachment.vpc-id", "Values": [state.vpc_id]}]
        )["InternetGateways"]
        tables = ec2.describe_route_tables(Filters=in_vpc)["RouteTables"]
        groups = ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
        flow_logs = ec2.describe_flow_logs(
            Filters=[{"Name": "resource-id", "Values": [state.vpc_id]}]
        )["FlowLogs"]
        peer_tables = []
        if env.peer_vpc_id:
            peer_tables = ec2.describe_route_tables(
                Filters=[{"Name": "vpc-id", "Values": [env.peer_vpc_id]}]
            )["RouteTables"]
    return [
        Finding(
            "no-internet-gateway",
            not gateways,
            "none attached"
            if not gateways
            else "attached: " + ", ".join(g["InternetGatewayId"] for g in gateways),
        ),
        _internet_routes(tables),
        _open_rules(groups, "IpPermissions", "no-open-ingress"),
        _open_rules(groups, "IpPermissionsEgress", "no-open-egress"),
        _vault_ingress(env, state, groups),
        _flow_logs(flow_logs),
        _peering(env, state, tables, peer_tables),
        _endpoints(env, state),
        _cluster(env, state),
    ]


def _internet_routes(tables: list[dict[str, Any]]) -> Finding:
    bad = [
        f"{t['RouteTableId']}: {r.get('DestinationCidrBlock') or r.get('DestinationIpv6CidrBlock')}"
        f" via {r.get('GatewayId') or r.get('NatGatewayId') or r.get('VpcPeeringConnectionId')}"
        for t in tables
        for r in t.get("Routes", [])
        if (r.get("DestinationCidrBlock") in OPEN or r.get("DestinationIpv6CidrBlock") in OPEN)
    ]
    return Finding("no-internet-route", not bad, "; ".join(bad) or "no default route")


def _open_rules(groups: list[dict[str, Any]], key: str, rule: str) -> Finding:
    bad = [
        f"{g['GroupId']} ({g.get('GroupName')})"
        for g in groups
        for p in g.get(key, [])
        if any(c in OPEN for c in _ranges(p))
    ]
    return Finding(rule, not bad, "; ".join(sorted(set(bad))) or "none")


def _vault_ingress(env: PciEnvironment, state: State, groups: list[dict[str, Any]]) -> Finding:
    group = next((g for g in groups if g["GroupId"] == state.security_groups.get("vault")), None)
    if group is None:
        return Finding("vault-ingress-whitelist", False, "no vault security group")
    allowed = set(env.allowed_source_cidrs)
    bad = []
    for permission in group.get("IpPermissions", []):
        if (
            permission.get("IpProtocol") != "tcp"
            or permission.get("FromPort") != env.vault_port
            or permission.get("ToPort") != env.vault_port
        ):
            bad.append(
                f"{permission.get('IpProtocol')} {permission.get('FromPort')}-"
                f"{permission.get('ToPort')}"
            )
        bad += [f"source {c}" for c in _ranges(permission) if c not in allowed]
        if permission.get("UserIdGroupPairs"):
            bad.append("security-group sources")
    return Finding(
        "vault-ingress-whitelist",
        not bad,
        "; ".join(bad) or f"tcp/{env.vault_port} from {sorted(allowed) or 'nobody'}",
    )


def _flow_logs(flow_logs: list[dict[str, Any]]) -> Finding:
    active = [
        f
        for f in flow_logs
        if f.get("FlowLogStatus", "ACTIVE") == "ACTIVE" and f.get("TrafficType") == "ALL"
    ]
    return Finding(
        "flow-logs",
        bool(active),
        "capturing ALL traffic" if active else "no active flow log for ALL traffic",
    )


def _peering(
    env: PciEnvironment,
    state: State,
    tables: list[dict[str, Any]],
    peer_tables: list[dict[str, Any]],
) -> Finding:
    bad = []
    allowed = [ipaddress.ip_network(c) for c in env.allowed_source_cidrs]
    vault = [ipaddress.ip_network(c) for c in env.subnet_cidrs]
    for table in tables:
        for route in table.get("Routes", []):
            if route.get("VpcPeeringConnectionId") and route.get("DestinationCidrBlock"):
                net = ipaddress.ip_network(route["DestinationCidrBlock"])
                if not any(net.subnet_of(a) for a in allowed):  # type: ignore[arg-type]
                    bad.append(f"PCI side routes {net} over the peering")
    for table in peer_tables:
        for route in table.get("Routes", []):
            if route.get("VpcPeeringConnectionId") == state.peering_id and route.get(
                "DestinationCidrBlock"
            ):
                net = ipaddress.ip_network(route["DestinationCidrBlock"])
                if not any(net.subnet_of(v) for v in vault):  # type: ignore[arg-type]
                    bad.append(f"main side routes {net}, beyond the vault subnets")
    if env.peer_vpc_id and state.peering_id is None:
        bad.append("no peering connection to the main VPC")
    return Finding("peering-routes", not bad, "; ".join(bad) or "limited to the vault subnets")


def _endpoints(env: PciEnvironment, state: State) -> Finding:
    missing = [s for s in env.endpoint_services if s not in state.endpoints]
    return Finding(
        "vpc-endpoints",
        not missing,
        "missing: " + ", ".join(missing) if missing else ", ".join(env.endpoint_services),
    )


def _cluster(env: PciEnvironment, state: State) -> Finding:
    if state.cluster_id is None:
        return Finding("cloudhsm-three-azs", False, "no CloudHSM cluster")
    zones = set(state.hsm_azs)
    ok = len(zones) >= 3
    return Finding(
        "cloudhsm-three-azs",
        ok,
        f"{state.cluster_id}: HSMs in {', '.join(sorted(zones)) or 'no AZ'}",
    )
