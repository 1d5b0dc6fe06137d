"""`cofre infra verify`: read the live account and check the PCI rules.

IN PCI SCOPE. Each rule has a stable name that the report and the tests use:

- ``no-internet-gateway``: no internet gateway attached to the PCI VPC;
- ``no-internet-route``: no route of the PCI VPC to a public address (0.0.0.0/0, and
  also 0.0.0.0/1 + 128.0.0.0/1 or any range beyond the private ones), whatever the target;
- ``no-open-ingress``: no security group rule admits a public address;
- ``no-open-egress``: no security group allows egress to a public address;
- ``vault-ingress-whitelist``: the vault group admits only the vault port, only from the
  declared peer CIDRs;
- ``no-outside-ingress``: no security group of the PCI VPC admits a source outside the
  VPC (a CIDR, another VPC's group, a prefix list), but the vault group's port from the
  allowed sources: the adapter tier is routed to the vault subnets, where RDS and the
  HSM ENIs live too, and must reach nothing there but the vault;
- ``flow-logs``: flow logs capture all traffic of the VPC and deliver it (an ACTIVE flow
  log whose role cannot write has DeliverLogsStatus FAILED);
- ``peering-routes``: the PCI VPC routes nowhere but itself and, over the managed
  peering, the allowed sources (no VPN, transit gateway or other peering); the main
  side's routes over the peering reach only the vault subnets;
- ``vpc-endpoints``: an interface endpoint exists for every AWS API the vault calls;
- ``vpc-endpoint-policies``: each endpoint admits only the principals of the VPC's own
  account (``aws:PrincipalAccount``; STS's also the web-identity exchange for that
  account's roles): AWS's default policy admits every account's, and the endpoints are
  the VPC's only way out (atk49h);
- ``cloudhsm-three-azs``: the CloudHSM cluster has HSMs in three Availability Zones;
- ``cloudhsm-fips-mode``: the cluster runs in FIPS mode (set when it was created, never
  changed after: cluster-hsm-types.html), so its keys live in a FIPS-validated module.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from infra_pci.aws import AwsClients, aws_errors
from infra_pci.model import PRIVATE_RANGES, PciEnvironment
from infra_pci.provision import PciProvisioner, State

# Address space that is not the internet; a range reaching beyond it is open.
_PRIVATE: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    *PRIVATE_RANGES,
    ipaddress.IPv6Network("fc00::/7"),
)


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


_ROUTE_TARGETS = (
    "VpcPeeringConnectionId",
    "GatewayId",
    "TransitGatewayId",
    "NatGatewayId",
    "NetworkInterfaceId",
    "InstanceId",
    "EgressOnlyInternetGatewayId",
    "LocalGatewayId",
    "CarrierGatewayId",
    "CoreNetworkArn",
)


def _open(cidr: str | None) -> bool:
    """Whether `cidr` holds a public address: 0.0.0.0/0, and also 0.0.0.0/1 with
    128.0.0.0/1 (together the same thing, and no string match sees them)."""
    if not cidr:
        return False
    return not any(_within(cidr, private) for private in _PRIVATE)


def _within(cidr: str, outer: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    network = ipaddress.ip_network(cidr, strict=False)
    return network.version == outer.version and network.subnet_of(outer)  # type: ignore[arg-type]


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
        _outside_ingress(env, state, groups),
        _flow_logs(flow_logs),
        _peering(env, state, tables, peer_tables),
        _endpoints(env, state),
        _endpoint_policies(state),
        _cluster(env, state),
        _cluster_mode(state),
    ]


def _internet_routes(tables: list[dict[str, Any]]) -> Finding:
    bad = [
        f"{t['RouteTableId']}: {r.get('DestinationCidrBlock') or r.get('DestinationIpv6CidrBlock')}"
        f" via {r.get('GatewayId') or r.get('NatGatewayId') or r.get('VpcPeeringConnectionId')}"
        for t in tables
        for r in t.get("Routes", [])
        if _open(r.get("DestinationCidrBlock")) or _open(r.get("DestinationIpv6CidrBlock"))
    ]
    return Finding("no-internet-route", not bad, "; ".join(bad) or "no default route")


def _open_rules(groups: list[dict[str, Any]], key: str, rule: str) -> Finding:
    bad = [
        f"{g['GroupId']} ({g.get('GroupName')})"
        for g in groups
        for p in g.get(key, [])
        if any(_open(c) for c in _ranges(p))
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


def _outside_ingress(env: PciEnvironment, state: State, groups: list[dict[str, Any]]) -> Finding:
    vpc = ipaddress.ip_network(env.vpc_cidr)
    inside = {g["GroupId"] for g in groups}
    vault = state.security_groups.get("vault")
    allowed = set(env.allowed_source_cidrs)
    bad = []
    for group in groups:
        for permission in group.get("IpPermissions", []):
            vault_port = (
                group["GroupId"] == vault
                and permission.get("IpProtocol") == "tcp"
                and permission.get("FromPort") == permission.get("ToPort") == env.vault_port
            )
            sources = [
                c
                for c in _ranges(permission)
                if not _within(c, vpc) and not (vault_port and c in allowed)
            ]
            sources += [
                p["GroupId"]
                for p in permission.get("UserIdGroupPairs", [])
                if p.get("GroupId") not in inside
            ]
            sources += [p["PrefixListId"] for p in permission.get("PrefixListIds", [])]
            bad += [
                f"{group['GroupId']} ({group.get('GroupName')}): {permission.get('IpProtocol')} "
                f"{permission.get('FromPort')}-{permission.get('ToPort')} from {source}"
                for source in sources
            ]
    return Finding(
        "no-outside-ingress",
        not bad,
        "; ".join(bad) or f"only tcp/{env.vault_port} of the vault group from outside the VPC",
    )


def _flow_logs(flow_logs: list[dict[str, Any]]) -> Finding:
    active = [
        f
        for f in flow_logs
        if f.get("FlowLogStatus", "ACTIVE") == "ACTIVE" and f.get("TrafficType") == "ALL"
    ]
    delivering = [f for f in active if f.get("DeliverLogsStatus", "SUCCESS") != "FAILED"]
    if delivering:
        return Finding("flow-logs", True, "capturing ALL traffic")
    if active:
        errors = sorted({str(f.get("DeliverLogsErrorMessage", "")) for f in active})
        return Finding("flow-logs", False, f"delivery FAILED: {', '.join(errors)}")
    return Finding("flow-logs", False, "no active flow log for ALL traffic")


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
            destination = route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")
            if not destination or route.get("GatewayId") == "local":
                continue
            net = ipaddress.ip_network(destination)
            peering = route.get("VpcPeeringConnectionId")
            if peering is None or peering != state.peering_id:
                # A VPN or transit gateway, an ENI, another peering: a way out of the CDE.
                target = next((route[k] for k in _ROUTE_TARGETS if route.get(k)), "?")
                bad.append(f"PCI side routes {net} via {target}")
            elif not any(_within(destination, a) for a in allowed):
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


def _statement_closed(statement: dict[str, Any], service: str, account: str | None) -> bool:
    if statement.get("Effect") != "Allow":
        return True  # a Deny narrows
    condition = statement.get("Condition", {}).get("StringEquals", {})
    if account is not None and condition.get("aws:PrincipalAccount") in (account, [account]):
        return True
    resources = statement.get("Resource")
    resources = [resources] if isinstance(resources, str) else list(resources or [])
    return (
        service == "sts"
        and statement.get("Action")
        in ("sts:AssumeRoleWithWebIdentity", ["sts:AssumeRoleWithWebIdentity"])
        and bool(resources)
        and all(r.startswith(f"arn:aws:iam::{account}:role/") for r in resources)
    )


def _endpoint_policies(state: State) -> Finding:
    bad = []
    for service in sorted(state.endpoints):
        policy = state.endpoint_policies.get(service)
        statements = (policy or {}).get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else statements
        if policy is None or not all(
            _statement_closed(s, service, state.account_id) for s in statements
        ):
            bad.append(service)
    return Finding(
        "vpc-endpoint-policies",
        not bad,
        "open to other accounts: " + ", ".join(bad)
        if bad
        else f"account {state.account_id}'s principals only",
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


def _cluster_mode(state: State) -> Finding:
    if state.cluster_id is None:
        return Finding("cloudhsm-fips-mode", False, "no CloudHSM cluster")
    ok = state.cluster_mode == "FIPS"
    detail = f"{state.cluster_id}: mode {state.cluster_mode or 'not reported'}"
    if not ok:
        detail += " (a mode cannot be changed: make a FIPS cluster and move the keys)"
    return Finding("cloudhsm-fips-mode", ok, detail)
