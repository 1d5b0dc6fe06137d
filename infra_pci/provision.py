"""Plan, apply and destroy the PCI environment, idempotently, touching only what it tags.

IN PCI SCOPE. `plan` reads the account and lists what `apply` would create; `apply`
creates exactly that (a second run finds nothing to do); `destroy` removes only
resources tagged ``cofre:managed=true`` for this environment. Steps AWS does not let an
API call finish (signing the CloudHSM cluster certificate, creating the crypto user)
are printed as exact next steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infra_pci.aws import AwsClients, aws_errors
from infra_pci.errors import PeerVpcNotFound
from infra_pci.model import ENVIRONMENT_TAG, MANAGED_TAG, ROLE_TAG, PciEnvironment

HSM_PORTS = (2223, 2225)
POSTGRES_PORT = 5432
S3_SERVICE = "s3"  # the audit archive's endpoint, reached by its own DNS name
STS_SERVICE = "sts"


def endpoint_policy(service: str, account: str) -> dict[str, Any]:
    """The policy of the PCI VPC's `service` endpoint: the principals of `account` alone
    (atk49h: AWS's default, made when none is given, admits every principal of every
    account to every resource, and the endpoints are the VPC's only way out, so anyone in
    the CDE with their own account's keys shipped data to their own bucket through
    them; PCI DSS 1.3.2). STS also answers the IRSA exchange, whose caller has no AWS
    account yet: AssumeRoleWithWebIdentity is admitted for `account`'s roles only."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AccountPrincipalsOnly",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalAccount": account}},
        }
    ]
    if service == STS_SERVICE:
        statements.append(
            {
                "Sid": "WebIdentityToAccountRoles",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Resource": f"arn:aws:iam::{account}:role/*",
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass(frozen=True)
class Change:
    action: str  # "+" create, "-" delete, "=" unchanged
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.kind:<16} {self.name}" + (
            f"  ({self.detail})" if self.detail else ""
        )


@dataclass
class State:
    """What exists now, found by tags."""

    vpc_id: str | None = None
    subnets: dict[str, str] = field(default_factory=dict)  # az -> subnet id
    route_table_id: str | None = None
    security_groups: dict[str, str] = field(default_factory=dict)  # role -> group id
    endpoints: dict[str, str] = field(default_factory=dict)  # service -> endpoint id
    # service -> its endpoint's policy, parsed (AWS's default when made without one)
    endpoint_policies: dict[str, Any] = field(default_factory=dict)
    account_id: str | None = None  # the PCI VPC's owner
    flow_log_id: str | None = None
    peering_id: str | None = None
    cluster_id: str | None = None
    cluster_mode: str | None = None  # FIPS or NON_FIPS, fixed when the cluster is made
    hsm_azs: list[str] = field(default_factory=list)
    default_group_open: bool = True


def _tag_filters(env: PciEnvironment, role: str | None = None) -> list[dict[str, Any]]:
    filters = [
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": f"tag:{ENVIRONMENT_TAG}", "Values": [env.name]},
    ]
    if role is not None:
        filters.append({"Name": f"tag:{ROLE_TAG}", "Values": [role]})
    return filters


def _role(tags: list[dict[str, str]] | None) -> str | None:
    return next((t["Value"] for t in tags or [] if t["Key"] == ROLE_TAG), None)


class PciProvisioner:
    """The PCI environment `env` in the account behind `clients`."""

    def __init__(self, env: PciEnvironment, clients: AwsClients) -> None:
        self.env = env
        self.clients = clients
        self.ec2 = clients.ec2
        self.logs = clients.logs
        self.cloudhsm = clients.cloudhsm

    # ------------------------------------------------------------------ discovery
    def discover(self) -> State:
        env = self.env
        state = State()
        with aws_errors("reading the PCI VPC"):
            vpcs = self.ec2.describe_vpcs(Filters=_tag_filters(env, "vpc"))["Vpcs"]
            if not vpcs:
                return state
            state.vpc_id = vpcs[0]["VpcId"]
            state.account_id = vpcs[0].get("OwnerId")
            in_vpc = [{"Name": "vpc-id", "Values": [state.vpc_id]}]
            for subnet in self.ec2.describe_subnets(Filters=in_vpc + _tag_filters(env))["Subnets"]:
                state.subnets[subnet["AvailabilityZone"]] = subnet["SubnetId"]
            tables = self.ec2.describe_route_tables(Filters=in_vpc + _tag_filters(env, "routes"))[
                "RouteTables"
            ]
            state.route_table_id = tables[0]["RouteTableId"] if tables else None
            for group in self.ec2.describe_security_groups(Filters=in_vpc + _tag_filters(env))[
                "SecurityGroups"
            ]:
                role = _role(group.get("Tags"))
                if role:
                    state.security_groups[role] = group["GroupId"]
            default = self._default_group(state.vpc_id)
            state.default_group_open = bool(
                default and (default.get("IpPermissions") or default.get("IpPermissionsEgress"))
            )
            for endpoint in self.ec2.describe_vpc_endpoints(Filters=in_vpc)["VpcEndpoints"]:
                if endpoint.get("State", "available").lower() in ("deleted", "deleting"):
                    continue
                service = endpoint["ServiceName"].rsplit(".", 1)[-1]
                state.endpoints[service] = endpoint["VpcEndpointId"]
                document = endpoint.get("PolicyDocument")
                state.endpoint_policies[service] = json.loads(document) if document else None
            logs = self.ec2.describe_flow_logs(
                Filters=[{"Name": "resource-id", "Values": [state.vpc_id]}]
            )["FlowLogs"]
            state.flow_log_id = logs[0]["FlowLogId"] if logs else None
            peerings = self.ec2.describe_vpc_peering_connections(
                Filters=[
                    {"Name": "requester-vpc-info.vpc-id", "Values": [state.vpc_id]},
                    {"Name": "status-code", "Values": ["active", "pending-acceptance"]},
                ]
            )["VpcPeeringConnections"]
            state.peering_id = peerings[0]["VpcPeeringConnectionId"] if peerings else None
        with aws_errors("reading the CloudHSM cluster"):
            for cluster in self.cloudhsm.describe_clusters()["Clusters"]:
                tags = {t["Key"]: t["Value"] for t in cluster.get("TagList", [])}
                if tags.get(ENVIRONMENT_TAG) == env.name and cluster.get("State") not in (
                    "DELETED",
                    "DELETE_IN_PROGRESS",
                ):
                    state.cluster_id = cluster["ClusterId"]
                    # hsm1.medium exists only in FIPS mode, and its clusters (all made
                    # before June 2024) may report no mode (cluster-hsm-types.html).
                    state.cluster_mode = (
                        "FIPS" if cluster.get("HsmType") == "hsm1.medium" else cluster.get("Mode")
                    )
                    state.hsm_azs = sorted(
                        h["AvailabilityZone"]
                        for h in cluster.get("Hsms", [])
                        if h.get("State") != "DELETED"
                    )
        return state

    # ------------------------------------------------------------------ plan
    def plan(self, state: State | None = None) -> list[Change]:
        """What `apply` would create (``+``) and what already exists (``=``)."""
        env = self.env
        state = state or self.discover()
        changes = []

        def item(present: bool, kind: str, name: str, detail: str = "") -> None:
            changes.append(Change("=" if present else "+", kind, name, detail))

        item(state.vpc_id is not None, "vpc", env.name, env.vpc_cidr)
        for az, cidr in zip(env.availability_zones, env.subnet_cidrs, strict=True):
            item(az in state.subnets, "subnet", f"{env.name}-{az}", f"{cidr} private")
        item(
            state.route_table_id is not None,
            "route-table",
            f"{env.name}-private",
            "local only" + (" + peering to allowed sources" if env.peer_vpc_id else ""),
        )
        item(
            state.vpc_id is not None and not state.default_group_open,
            "default-sg-lock",
            f"{env.name} default group",
            "no rules: nothing may use it",
        )
        item(
            "vault" in state.security_groups,
            "security-group",
            f"{env.name}-vault",
            f"ingress tcp/{env.vault_port} from {', '.join(env.allowed_source_cidrs) or 'nobody'}",
        )
        item(
            "endpoints" in state.security_groups,
            "security-group",
            f"{env.name}-endpoints",
            f"ingress tcp/443 from {env.vpc_cidr}",
        )
        for service in env.endpoint_services:
            how = "by its own name" if service == S3_SERVICE else "private DNS"
            item(service in state.endpoints, "vpc-endpoint", service, f"interface, {how}")
            if service in state.endpoints and not self._policy_closed(state, service):
                item(False, "endpoint-policy", service, "this account's principals only")
        item(state.flow_log_id is not None, "flow-log", env.flow_log_group, "ALL traffic")
        if env.peer_vpc_id:
            item(
                state.peering_id is not None,
                "vpc-peering",
                f"{env.name}->{env.peer_vpc_id}",
                "routes limited to the vault subnets",
            )
        item(state.cluster_id is not None, "cloudhsm-cluster", env.name, env.hsm_type)
        for az in env.availability_zones:
            have = state.hsm_azs.count(az)
            item(have >= env.hsms_per_az, "cloudhsm-hsm", az)
        return changes

    # ------------------------------------------------------------------ apply
    def apply(self) -> tuple[list[Change], list[str]]:
        """Create what is missing; return the changes made and the manual next steps."""
        state = self.discover()
        planned = self.plan(state)
        if all(c.action == "=" for c in planned):
            return [], self._next_steps(state)
        self._apply_network(state)
        self._apply_cluster(state)
        return [c for c in planned if c.action == "+"], self._next_steps(state)

    def _apply_network(self, state: State) -> None:  # noqa: PLR0912 - one step per resource
        env, ec2 = self.env, self.ec2
        with aws_errors("creating the PCI VPC"):
            if state.vpc_id is None:
                vpc = ec2.create_vpc(
                    CidrBlock=env.vpc_cidr,
                    TagSpecifications=[{"ResourceType": "vpc", "Tags": env.tags("vpc", "vpc")}],
                )["Vpc"]
                state.vpc_id = vpc["VpcId"]
                state.account_id = vpc.get("OwnerId")
                ec2.modify_vpc_attribute(VpcId=state.vpc_id, EnableDnsSupport={"Value": True})
                ec2.modify_vpc_attribute(VpcId=state.vpc_id, EnableDnsHostnames={"Value": True})
            if state.default_group_open:
                self._lock_default_group(state.vpc_id)
                state.default_group_open = False
            for az, cidr in zip(env.availability_zones, env.subnet_cidrs, strict=True):
                if az not in state.subnets:
                    subnet = ec2.create_subnet(
                        VpcId=state.vpc_id,
                        CidrBlock=cidr,
                        AvailabilityZone=az,
                        TagSpecifications=[
                            {"ResourceType": "subnet", "Tags": env.tags("subnet", f"private-{az}")}
                        ],
                    )["Subnet"]
                    state.subnets[az] = subnet["SubnetId"]
            if state.route_table_id is None:
                table = ec2.create_route_table(
                    VpcId=state.vpc_id,
                    TagSpecifications=[
                        {"ResourceType": "route-table", "Tags": env.tags("routes", "private")}
                    ],
                )["RouteTable"]
                state.route_table_id = table["RouteTableId"]
                for subnet_id in state.subnets.values():
                    ec2.associate_route_table(RouteTableId=state.route_table_id, SubnetId=subnet_id)
            if "endpoints" not in state.security_groups:
                state.security_groups["endpoints"] = self._group(
                    state,
                    "endpoints",
                    "AWS API endpoints: HTTPS from inside the VPC",
                    [(443, 443, env.vpc_cidr)],
                    egress=[],
                )
            if "vault" not in state.security_groups:
                egress = [
                    (443, 443, env.vpc_cidr),
                    (HSM_PORTS[0], HSM_PORTS[1], env.vpc_cidr),
                    (POSTGRES_PORT, POSTGRES_PORT, env.vpc_cidr),
                ]
                state.security_groups["vault"] = self._group(
                    state,
                    "vault",
                    "Cofre vault: the API port from the allowed peers only",
                    [(env.vault_port, env.vault_port, c) for c in env.allowed_source_cidrs],
                    egress=egress,
                )
            account = self._account(state)
            for service in env.endpoint_services:
                policy = json.dumps(endpoint_policy(service, account))
                if service in state.endpoints and not self._policy_closed(state, service):
                    ec2.modify_vpc_endpoint(
                        VpcEndpointId=state.endpoints[service], PolicyDocument=policy
                    )
                    state.endpoint_policies[service] = json.loads(policy)
                if service not in state.endpoints:
                    endpoint = ec2.create_vpc_endpoint(
                        VpcEndpointType="Interface",
                        VpcId=state.vpc_id,
                        ServiceName=f"com.amazonaws.{env.region}.{service}",
                        SubnetIds=list(state.subnets.values()),
                        SecurityGroupIds=[state.security_groups["endpoints"]],
                        # S3 is reached by the endpoint's own name (the vault's
                        # `[archive] endpoint_url`): its private DNS on an interface
                        # endpoint needs conditions the manifests do not rely on.
                        PrivateDnsEnabled=service != S3_SERVICE,
                        PolicyDocument=policy,
                        TagSpecifications=[
                            {"ResourceType": "vpc-endpoint", "Tags": env.tags("endpoint", service)}
                        ],
                    )["VpcEndpoint"]
                    state.endpoints[service] = endpoint["VpcEndpointId"]
                    state.endpoint_policies[service] = json.loads(policy)
        with aws_errors("turning on VPC flow logs"):
            if state.flow_log_id is None:
                existing = self.logs.describe_log_groups(logGroupNamePrefix=env.flow_log_group)[
                    "logGroups"
                ]
                if not any(g["logGroupName"] == env.flow_log_group for g in existing):
                    self.logs.create_log_group(
                        logGroupName=env.flow_log_group, tags={MANAGED_TAG: "true"}
                    )
                result = ec2.create_flow_logs(
                    ResourceIds=[state.vpc_id],
                    ResourceType="VPC",
                    TrafficType="ALL",
                    LogDestinationType="cloud-watch-logs",
                    LogGroupName=env.flow_log_group,
                    DeliverLogsPermissionArn=env.flow_log_role_arn,
                    TagSpecifications=[
                        {"ResourceType": "vpc-flow-log", "Tags": env.tags("flow-log", "flow-log")}
                    ],
                )
                state.flow_log_id = result["FlowLogIds"][0]
        if env.peer_vpc_id and state.peering_id is None:
            self._apply_peering(state)

    def _account(self, state: State) -> str:
        if state.account_id is None:
            vpc = self.ec2.describe_vpcs(VpcIds=[state.vpc_id])["Vpcs"][0]
            state.account_id = str(vpc["OwnerId"])
        return state.account_id

    def _policy_closed(self, state: State, service: str) -> bool:
        """Whether `service`'s endpoint has exactly the policy `apply` gives it."""
        if state.account_id is None:
            return False
        return state.endpoint_policies.get(service) == endpoint_policy(service, state.account_id)

    def _default_group(self, vpc_id: str) -> dict[str, Any] | None:
        groups = self.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": ["default"]},
            ]
        )["SecurityGroups"]
        return groups[0] if groups else None

    def _lock_default_group(self, vpc_id: str) -> None:
        # Every VPC's default group allows all egress (and ingress from itself); in the
        # CDE nothing may rely on it, so it keeps no rules at all.
        group = self._default_group(vpc_id)
        if group is None:
            return
        if group.get("IpPermissions"):
            self.ec2.revoke_security_group_ingress(
                GroupId=group["GroupId"], IpPermissions=group["IpPermissions"]
            )
        if group.get("IpPermissionsEgress"):
            self.ec2.revoke_security_group_egress(
                GroupId=group["GroupId"], IpPermissions=group["IpPermissionsEgress"]
            )

    def _group(
        self,
        state: State,
        role: str,
        description: str,
        ingress: list[tuple[int, int, str]],
        egress: list[tuple[int, int, str]],
    ) -> str:
        env, ec2 = self.env, self.ec2
        group_id: str = ec2.create_security_group(
            GroupName=f"{env.name}-{role}",
            Description=description,
            VpcId=state.vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": env.tags(role, role)}],
        )["GroupId"]
        # A new group allows all egress; whitelist-only means removing that first.
        ec2.revoke_security_group_egress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
        if ingress:
            ec2.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": lo,
                        "ToPort": hi,
                        "IpRanges": [{"CidrIp": cidr}],
                    }
                    for lo, hi, cidr in ingress
                ],
            )
        if egress:
            ec2.authorize_security_group_egress(
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": lo,
                        "ToPort": hi,
                        "IpRanges": [{"CidrIp": cidr}],
                    }
                    for lo, hi, cidr in egress
                ],
            )
        return group_id

    def _apply_peering(self, state: State) -> None:
        env, ec2 = self.env, self.ec2
        with aws_errors("peering with the main VPC"):
            peers = ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [env.peer_vpc_id]}])[
                "Vpcs"
            ]
            if not peers:
                raise PeerVpcNotFound(f"the peer VPC {env.peer_vpc_id} does not exist")
            peering = ec2.create_vpc_peering_connection(
                VpcId=state.vpc_id,
                PeerVpcId=env.peer_vpc_id,
                TagSpecifications=[
                    {
                        "ResourceType": "vpc-peering-connection",
                        "Tags": env.tags("peering", "peering"),
                    }
                ],
            )["VpcPeeringConnection"]
            state.peering_id = peering["VpcPeeringConnectionId"]
            ec2.accept_vpc_peering_connection(VpcPeeringConnectionId=state.peering_id)
            # PCI side: back to the allowed sources only.
            for cidr in env.allowed_source_cidrs:
                ec2.create_route(
                    RouteTableId=state.route_table_id,
                    DestinationCidrBlock=cidr,
                    VpcPeeringConnectionId=state.peering_id,
                )
            # Main side: only the vault subnets are reachable, not the whole PCI VPC.
            tables = ec2.describe_route_tables(
                Filters=[{"Name": "vpc-id", "Values": [env.peer_vpc_id]}]
            )["RouteTables"]
            for table in tables:
                for cidr in env.subnet_cidrs:
                    ec2.create_route(
                        RouteTableId=table["RouteTableId"],
                        DestinationCidrBlock=cidr,
                        VpcPeeringConnectionId=state.peering_id,
                    )

    def _apply_cluster(self, state: State) -> None:
        env = self.env
        with aws_errors("creating the CloudHSM cluster"):
            if state.cluster_id is None:
                # FIPS mode, explicitly: the mode can never change once the cluster
                # exists (cluster-hsm-types.html), and PCI DSS 3.6.1.2 wants the keys in
                # a validated secure cryptographic device. `verify` checks it.
                cluster = self.cloudhsm.create_cluster(
                    HsmType=env.hsm_type,
                    Mode="FIPS",
                    SubnetIds=list(state.subnets.values()),
                    TagList=[
                        {"Key": t["Key"], "Value": t["Value"]}
                        for t in env.tags("cloudhsm", "cluster")
                    ],
                )["Cluster"]
                state.cluster_id = cluster["ClusterId"]
                state.cluster_mode = cluster.get("Mode", "FIPS")
            for az in env.availability_zones:
                while state.hsm_azs.count(az) < env.hsms_per_az:
                    self.cloudhsm.create_hsm(ClusterId=state.cluster_id, AvailabilityZone=az)
                    state.hsm_azs.append(az)

    def _next_steps(self, state: State) -> list[str]:
        steps = []
        if S3_SERVICE in state.endpoints:
            steps.append(
                "set cofre.toml's [archive] endpoint_url to https://bucket. followed by the "
                "name after '*.' that `aws ec2 describe-vpc-endpoints --vpc-endpoint-ids "
                f"{state.endpoints[S3_SERVICE]} --query 'VpcEndpoints[].DnsEntries[0].DnsName'` "
                'prints (docs/operations.md, "Audit growth")'
            )
        if state.cluster_id is None:
            return steps
        cid = state.cluster_id
        return [
            *steps,
            f"aws cloudhsmv2 describe-clusters --filters clusterIds={cid} "
            "--query 'Clusters[].Certificates.ClusterCsr' --output text > cluster.csr",
            "sign cluster.csr with your issuing CA (openssl x509 -req ... -out cluster.crt)",
            f"aws cloudhsmv2 initialize-cluster --cluster-id {cid} "
            "--signed-cert file://cluster.crt --trust-anchor file://issuing-ca.crt",
            "on a vault node: /opt/cloudhsm/bin/configure-cli -a <HSM IP>; cloudhsm-cli "
            "interactive; cluster activate (sets the admin password)",
            "in cloudhsm-cli as admin: user create --username cofre --role crypto-user",
            "store 'cofre:<password>' as the vault's PIN file (docs/cloudhsm.md), then "
            "run `cofre hsm init` on one node",
        ]

    # ------------------------------------------------------------------ destroy
    def destroy(self) -> list[Change]:
        """Delete every resource tagged for this environment (and nothing else)."""
        state = self.discover()
        env, ec2 = self.env, self.ec2
        removed: list[Change] = []
        with aws_errors("deleting the CloudHSM cluster"):
            if state.cluster_id is not None:
                cluster = self.cloudhsm.describe_clusters(
                    Filters={"clusterIds": [state.cluster_id]}
                )["Clusters"][0]
                for hsm in cluster.get("Hsms", []):
                    self.cloudhsm.delete_hsm(ClusterId=state.cluster_id, HsmId=hsm["HsmId"])
                self.cloudhsm.delete_cluster(ClusterId=state.cluster_id)
                removed.append(Change("-", "cloudhsm-cluster", state.cluster_id))
        if state.vpc_id is None:
            return removed
        with aws_errors("deleting the PCI VPC"):
            if state.endpoints:
                ec2.delete_vpc_endpoints(VpcEndpointIds=list(state.endpoints.values()))
                removed += [Change("-", "vpc-endpoint", s) for s in state.endpoints]
            if state.flow_log_id:
                ec2.delete_flow_logs(FlowLogIds=[state.flow_log_id])
                removed.append(Change("-", "flow-log", state.flow_log_id))
            if state.peering_id:
                ec2.delete_vpc_peering_connection(VpcPeeringConnectionId=state.peering_id)
                removed.append(Change("-", "vpc-peering", state.peering_id))
            for role, group_id in state.security_groups.items():
                ec2.delete_security_group(GroupId=group_id)
                removed.append(Change("-", "security-group", f"{env.name}-{role}"))
            if state.route_table_id:
                table = ec2.describe_route_tables(RouteTableIds=[state.route_table_id])
                for assoc in table["RouteTables"][0].get("Associations", []):
                    if not assoc.get("Main"):
                        ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
                ec2.delete_route_table(RouteTableId=state.route_table_id)
                removed.append(Change("-", "route-table", state.route_table_id))
            for az, subnet_id in state.subnets.items():
                ec2.delete_subnet(SubnetId=subnet_id)
                removed.append(Change("-", "subnet", f"{env.name}-{az}"))
            ec2.delete_vpc(VpcId=state.vpc_id)
            removed.append(Change("-", "vpc", state.vpc_id))
        return removed
