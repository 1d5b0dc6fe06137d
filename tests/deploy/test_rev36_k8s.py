"""deploy/k8s, review 36: a first deployment to EKS with CloudHSM, a QSA's segmentation
check (the vault the only in-scope system) and an attacker in another pod of the
cluster. The manifests are rendered offline as in test_manifests.py; each test names the
finding it pins."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cofre.settings import unknown_variables
from hsm.library import is_softhsm
from tests.deploy.test_manifests import DEPLOY, K8S, ROOT, TARGETS
from tests.support.kustomize import pod_settings, pod_spec, render, workloads

OVERLAYS = [target for target in TARGETS if target.startswith("overlays/")]
# The node label and taint that set the CDE's nodes apart (docs/operations.md, "Deploy
# on Kubernetes": the node group).
CDE_LABEL = ("cofre.dev/pci-scope", "cde")
# CoreDNS's pods on EKS (and kubeadm, and most distributions) carry this label.
DNS_PODS = {"k8s-app": "kube-dns"}


def _objects(target: str) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / target)}


def _docs() -> str:
    return (ROOT / "docs" / "operations.md").read_text()


def _stages() -> dict[str, dict[str, str]]:
    """Each stage of deploy/Dockerfile by name: its ENV, a stage built `FROM` another
    inheriting that one's."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (raw.strip() for raw in text.splitlines()):
        if match := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            current = dict(stages.get(match[1], {}))
            stages[match[2]] = current
        elif line.startswith("ENV "):
            current.update(re.findall(r"(\w+)=(\S+)", line.removeprefix("ENV ")))
    return stages


def _stage_of(image: str) -> str:
    """The Dockerfile target an image was built from: `-cloudhsm` tags are
    `--target runtime-cloudhsm` (docs/operations.md), the others `--target runtime`."""
    return "runtime-cloudhsm" if image.rsplit(":", 1)[-1].endswith("-cloudhsm") else "runtime"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_overlay_loads_a_pkcs11_library_its_image_has(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 36 (first EKS deployment): the staging overlay ran the `runtime` image,
    which has no PKCS#11 library, with the base's settings, which name SoftHSM2's
    default path: `cofre serve` refuses SoftHSM2 in production and the file is not in
    the image either, so every staging pod exited at start. An overlay's vault loads a
    library its image's stage installs (CloudHSM's, for staging as for production: a
    staging vault keeps its keys in an HSM of its own, docs/pci-tokenization.md 3.6.1.1)."""
    objects = _objects(target)
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    stage = _stages()[_stage_of(vault["image"])]
    library = pod_settings(objects, tmp_path, monkeypatch).hsm.library
    assert not is_softhsm(library), f"{target}: {library} is SoftHSM2, refused by cofre serve"
    assert str(library) == stage.get("COFRE_HSM__LIBRARY"), (
        f"{target}: the vault loads {library}; its image ({vault['image']}) installs "
        f"{stage.get('COFRE_HSM__LIBRARY', 'no PKCS#11 library')}"
    )
    mounts = {m["mountPath"] for m in vault["volumeMounts"]}
    assert "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg" in mounts, f"{target}: no client config"


def _deploy_section() -> str:
    return _docs().split("## Deploy on Kubernetes", 1)[1].split("\n### ", 1)[0]


@pytest.mark.parametrize("target", TARGETS)
def test_cde_pods_run_on_cde_nodes_that_run_nothing_else(target: str) -> None:
    """Review 36 (QSA, attacker in another pod): nothing kept the vault off nodes that run
    the adapters or any other workload, nor them off the vault's nodes. A pod sharing
    the vault's kernel is one escape from the unwrapped data keys in its memory, a
    host-network pod there reaches every port of it past any NetworkPolicy, and such
    nodes and all they run are in scope. The vault and its migration run only on nodes
    labelled for the CDE, and tolerate that taint alone (a toleration without a key
    tolerates every taint: a node tainted for anything else would take them)."""
    key, value = CDE_LABEL
    objects = _objects(target)
    for name in workloads(objects):
        pod = pod_spec(objects[name])
        assert pod.get("nodeSelector", {}).get(key) == value, f"{target} {name}"
        tolerations = pod.get("tolerations", [])
        assert all(t.get("key") == key for t in tolerations), f"{target} {name}: {tolerations}"
        assert {"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"} in (
            tolerations
        ), f"{target} {name}"
    section = _deploy_section()
    assert f"`{key}={value}:NoSchedule`" in section
    assert f"`{key}={value}`" in section


def test_the_vault_role_trusts_the_vault_service_account_alone() -> None:
    """Review 36 (attacker in another pod): docs/operations.md said which permissions the
    IRSA role gets, not whom it trusts. A role for web identity made as AWS's console
    offers it checks the token's audience only, so any pod of the cluster, with its own
    service account's projected token, could assume the vault's role and connect to RDS
    as `cofre_vault`. The documented trust policy names the vault's account, in its
    namespace, exactly (`StringEquals` on `sub`, and on `aud`)."""
    objects = _objects("overlays/production")
    vault = pod_spec(objects["Deployment/cofre"])["serviceAccountName"]
    account = objects[f"ServiceAccount/{vault}"]
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    subject = f"system:serviceaccount:{account['metadata']['namespace']}:{vault}"
    docs = _docs()
    (policy,) = re.findall(r"```json\n(\{[^`]*?AssumeRoleWithWebIdentity[^`]*?)```", docs)
    condition = policy.split('"Condition"', 1)[1]
    assert '"StringEquals"' in condition
    assert "StringLike" not in condition  # a wildcard would take every account
    assert re.search(rf':sub":\s*"{re.escape(subject)}"', condition), condition
    assert re.search(r':aud":\s*"sts\.amazonaws\.com"', condition), condition


@pytest.mark.parametrize("target", TARGETS)
def test_dns_goes_to_the_cluster_dns_alone(target: str) -> None:
    """Review 36 (QSA, PCI DSS 1.3.2: outbound CDE traffic limited to what is needed):
    each CDE policy opened port 53 to every pod of kube-system (controllers, CSI and
    network agents, anything installed there), where the vault needs CoreDNS only."""
    for obj in render(K8S / target):
        if obj["kind"] != "NetworkPolicy":
            continue
        for rule in obj["spec"].get("egress", []):
            if not any(p["port"] == 53 for p in rule["ports"]):
                continue
            assert all(p["port"] == 53 for p in rule["ports"]), rule
            for peer in rule["to"]:
                namespaces = peer["namespaceSelector"]["matchLabels"]
                assert namespaces == {"kubernetes.io/metadata.name": "kube-system"}
                assert peer.get("podSelector", {}).get("matchLabels") == DNS_PODS, (
                    f"{target} {obj['metadata']['name']}: {peer}"
                )


# The PROXY protocol's headers as a balancer sends them ahead of the client's bytes
# (haproxy.org/download/2.9/doc/proxy-protocol.txt): version 1's text, version 2's
# binary signature.
PROXY_SIGNATURES = ("PROXY TCP", r"\r\n\r\n\x00\r\nQUIT\n", "proxy_protocol")


def test_no_doc_asks_for_a_proxy_protocol_the_listeners_do_not_read() -> None:
    """Review 36 (first EKS deployment with hosted capture): docs/capture.md and the
    threat model said to keep the shopper's address behind a balancer with the PROXY
    protocol, but no listener reads its header: a Network Load Balancer target group with
    `proxy_protocol_v2.enabled`, as that advice leads to, puts the header ahead of the
    ClientHello and every handshake of the capture port fails. While api/ reads no such
    header, the docs say so and name what keeps the address instead."""
    readers = [
        module
        for module in (ROOT / "api").rglob("*.py")
        if any(signature in module.read_text() for signature in PROXY_SIGNATURES)
    ]
    assert not readers, f"api/ reads the PROXY protocol now: update the docs ({readers})"
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for document in documents:
        text = re.sub(r"\s+", " ", document.read_text())
        for sentence in re.split(r"(?<=[.;:])\s", text):
            if "PROXY protocol" in sentence:
                assert "reads no PROXY protocol" in sentence, f"{document.name}: {sentence}"
    capture = re.sub(r"\s+", " ", (ROOT / "docs" / "capture.md").read_text())
    assert "preserve_client_ip.enabled" in capture
    assert "proxy_protocol_v2.enabled" in capture


def _service_links(service: dict[str, Any]) -> set[str]:
    """The variables the kubelet puts in every pod of `service`'s namespace when the pod
    has `enableServiceLinks` (the default): Docker links' names, the Service's name in
    upper case with `-` as `_` (kubernetes.io/docs/concepts/services-networking/
    service/#environment-variables; pkg/kubelet/envvars)."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    links = {f"{name}_SERVICE_HOST", f"{name}_SERVICE_PORT", f"{name}_PORT"}
    for port in service["spec"]["ports"]:
        if "name" in port:
            links.add(f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
        prefix = f"{name}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
        links |= {prefix, f"{prefix}_PROTO", f"{prefix}_PORT", f"{prefix}_ADDR"}
    return links


@pytest.mark.parametrize("target", TARGETS)
def test_no_service_link_variable_stops_a_pod(target: str) -> None:
    """Review 36 (first EKS deployment; critical): the Service is named `cofre`, so the
    kubelet gave every pod of the namespace `COFRE_SERVICE_HOST`, `COFRE_PORT`,
    `COFRE_PORT_8443_TCP_ADDR` and the like, and `load_settings` refuses a `COFRE_*`
    variable that is no setting: every vault pod and the migration Job exited at start
    with "unknown environment variable COFRE_PORT, ...". A pod that runs the vault's
    image turns the links off, or no Service's links are `COFRE_*` names."""
    objects = _objects(target)
    services = [o for o in objects.values() if o["kind"] == "Service"]
    links = set().union(*(_service_links(service) for service in services))
    for name in workloads(objects):
        pod = pod_spec(objects[name])
        if pod.get("enableServiceLinks", True) is False:
            continue
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            environ = {**dict.fromkeys(links, "x"), **env}
            assert not unknown_variables(environ), f"{target} {name}: {unknown_variables(environ)}"


def _release_build() -> str:
    """docs/operations.md's command that builds and pushes the production image."""
    blocks = re.findall(r"```sh\n(.*?)```", _deploy_section(), re.S)
    commands = [c for block in blocks for c in block.replace("\\\n", " ").splitlines()]
    (build,) = [c for c in commands if "runtime-cloudhsm" in c and "--push" in c]
    return build


def test_the_release_image_is_pinned_inventoried_and_immutable() -> None:
    """Review 36 (QSA, PCI DSS 6.3.2 inventory, 6.5.1 change control): the image was
    built from `debian:bookworm-slim` as the registry served it that day, with no
    software bill of materials, and deployed by a tag anyone who may push can move: what
    ran could not be told from what was reviewed. The documented release build pins
    every base image by digest (a BuildKit build context named as the image, so the
    Dockerfile keeps its readable name), attaches an SBOM and provenance, and the
    repository's tags are immutable."""
    text = (DEPLOY / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    bases = {image for image in re.findall(r"^FROM (\S+)", text, re.M) if image not in stages}
    assert bases == {"debian:bookworm-slim"}
    build = _release_build()
    for image in bases:
        assert f"--build-context {image}=docker-image://{image}@sha256:" in build, image
    assert "--sbom=true" in build
    assert "--provenance=mode=max" in build
    assert "--image-tag-mutability IMMUTABLE" in _deploy_section()


def test_no_build_input_stays_in_a_layer_of_the_image() -> None:
    """Review 36: the CloudHSM stage copied its build context (the client's .deb and the
    cluster's CA) into /tmp and removed it in the next step, which hides the files but
    keeps them in the image's layers, an installer the runtime never uses (PCI DSS
    2.2.4). A build input that is no stage is mounted for the step that uses it."""
    text = (DEPLOY / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    copies = re.findall(r"^COPY --from=(\S+)", text, re.M)
    assert copies
    assert set(copies) <= stages, set(copies) - stages
    assert "--mount=type=bind,from=cloudhsm," in text


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_server_certificate_is_documented_for_the_name_clients_dial(target: str) -> None:
    """Review 36 (first EKS deployment): the table of objects to create asked for "the
    server certificate" and no name: adapters in the cluster dial the Service's DNS name,
    and a certificate made for any other name fails their hostname check on every call."""
    service = _objects(target)["Service/cofre"]["metadata"]
    name = f"{service['name']}.{service['namespace']}.svc"
    (row,) = [line for line in _docs().splitlines() if line.startswith("| Secret `cofre-tls` |")]
    assert f"`{name}`" in row


def _build_commands() -> list[tuple[str, str]]:
    """(where, command) of every `docker build` the docs and the Dockerfile show,
    continuation lines joined."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), DEPLOY / "Dockerfile"]
    commands = []
    for source in sources:
        text = re.sub(r"\\\n#?\s*", " ", source.read_text())
        commands += [
            (source.name, line.strip().lstrip("# "))
            for line in text.splitlines()
            if re.search(r"docker (buildx )?build ", line)
        ]
    return commands


def test_every_documented_build_has_the_contexts_its_target_needs() -> None:
    """Review 36 (first build): `docker build -f deploy/Dockerfile -t cofre:dev .`, the
    first command of "Deploy on Kubernetes" and of the Dockerfile's own header, builds
    the last stage, `runtime-cloudhsm`, which needs the `cloudhsm` build context: without
    it BuildKit takes `cloudhsm` for an image on Docker Hub and the build fails (or pulls
    whatever someone publishes under that name). Each documented build names a target
    whose stages use no build context it does not pass."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    parents: dict[str, str] = {}
    uses: dict[str, set[str]] = {}
    stage = ""
    for line in (raw.strip() for raw in text.splitlines()):
        if match := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            stage = match[2]
            parents[stage] = match[1]
            uses[stage] = set()
        elif stage and not line.startswith("#"):
            uses[stage] |= set(re.findall(r"--(?:mount=\S*?)?from=([\w.-]+)", line))
    last = stage
    commands = _build_commands()
    assert len(commands) >= 4
    for where, command in commands:
        target = re.search(r"--target (\S+)", command)
        chain, needed = target[1] if target else last, set()
        while chain in parents:
            needed |= uses[chain] - set(parents)
            chain = parents[chain]
        given = set(re.findall(r"--build-context ([\w.-]+)=", command))
        assert needed <= given, f"{where}: `{command}` lacks the build context {needed - given}"


# What in the CDE namespace gives the HSM PIN, the database URLs or the vault's process:
# reading Secrets, or running something beside the vault (exec, attach, an ephemeral
# container sharing its process namespace, a port forward past the NetworkPolicy, a pod
# of one's own labelled as the vault), or changing the policies that fence it.
NAMESPACE_POWERS = (
    "secrets",
    "pods/exec",
    "pods/attach",
    "pods/ephemeralcontainers",
    "pods/portforward",
    "networkpolicies",
)


def test_who_may_act_in_the_cde_namespace_is_documented() -> None:
    """Review 36 (QSA, PCI DSS 7.2; attacker in another pod): nothing said who may act in
    the `cofre` namespace. `get` on its Secrets is the HSM PIN and the owner role's
    password; `pods/exec` or an ephemeral container beside the vault reads the same
    files as its user, from inside the only pods the HSM and the database admit; and a
    workload elsewhere whose service account may read Secrets in every namespace (a
    deployment tool, an operator) hands all of it to whoever compromises that pod. The
    Deploy section names each such power, how to list who holds it, and the control
    plane's audit log that records its use."""
    section = re.sub(r"\s+", " ", _deploy_section())
    for power in NAMESPACE_POWERS:
        assert f"`{power}`" in section, power
    assert "kubectl auth can-i" in section
    assert "`audit`" in section  # the EKS control plane log type


def test_the_cluster_s_place_beside_the_pci_vpc_is_documented() -> None:
    """Review 36 (first EKS deployment, QSA): the manifests admit adapters from namespaces
    of the same cluster, while `cofre infra` builds a PCI VPC that admits the adapter
    tier only from a peered VPC and nothing else from outside (`no-outside-ingress`). An
    EKS cluster's pods have addresses in the cluster's VPC, so vault pods of a cluster
    outside the PCI VPC are outside sources to its database and HSMs, and a cluster in
    it, whose only private subnets reach AWS through endpoints, cannot pull its images
    without ECR's. Nothing said which shape the manifests fit or what each needs."""
    section = re.sub(r"\s+", " ", _deploy_section())
    for needed in ("`allowed_source_cidrs`", "`ipBlock`", "`no-outside-ingress`", "`ecr.dkr`"):
        assert needed in section, needed


def test_the_docs_say_eks_enforces_network_policies_only_when_asked() -> None:
    """Review 36 (first EKS deployment, QSA): every segmentation control of the manifests
    is a NetworkPolicy, and EKS's API server takes NetworkPolicies whether or not
    anything enforces them: with the VPC CNI's network policy agent off (its default),
    `default-deny` and every rule are stored and ignored, every pod of the cluster
    reaches the vault's ports, and nothing says so. The docs name the switch and a test
    of the boundary from outside it."""
    section = re.sub(r"\s+", " ", _deploy_section())
    assert '`{"enableNetworkPolicy": "true"}`' in section
    assert "from a pod in another namespace" in section
