"""deploy/: the Dockerfile (hadolint, from the wheel in the lock) and the Kubernetes
manifests (rendered offline, validated against the official schemas shipped in
kubernetes-validate, then held to the properties the vault's lifecycle relies on)."""

from __future__ import annotations

import ast
import ipaddress
import math
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from api.lifecycle import INTERRUPTED_SECONDS, LEFT_CALLS_SECONDS
from cofre.settings import load_settings
from tests.support.kustomize import pod_settings, pod_spec, render, workloads
from witness.server import WitnessConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TARGETS = ["base", "overlays/staging", "overlays/production"]
# The oldest Kubernetes the manifests promise (the native preStop `sleep` is beta and on
# by default from 1.30) and the newest the schemas ship.
VERSIONS = ["1.30.0", "1.37.0"]
# After preStop, the drain, the interrupted requests' answers and the calls cancelled at
# its deadline: wiping the data keys, the HSM logout and the last telemetry flush need
# time of their own before SIGKILL (docs/operations.md "Stopping and draining": 15 s).
SHUTDOWN_MARGIN_SECONDS = 15
# A worker's memory budget: ~120 MiB RSS measured after load (review 34), doubled.
WORKER_MEMORY_MIB = 256


def _objects(target: str) -> dict[str, dict[str, Any]]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / target)}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_slim_debian_non_root_and_hash_pinned() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert all(
        line.startswith("FROM debian:bookworm-slim") or " runtime " in line for line in froms
    )
    runtime = lines[lines.index("FROM debian:bookworm-slim AS runtime") :]
    users = [line for line in runtime if line.startswith("USER ")]
    assert users[-1] == "USER 10001:10001"
    assert "--require-hashes" in "\n".join(lines)
    assert not any(line.startswith("ADD ") for line in lines)
    assert 'ENTRYPOINT ["cofre"]' in lines


def _build_stage() -> list[str]:
    """The build stage's instructions, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index("FROM debian:bookworm-slim AS build")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM "))
    return lines[start + 1 : end]


def _first_party_imports(package: Path, first_party: set[str]) -> set[str]:
    names: set[str] = set()
    for module in package.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names & first_party


def test_the_image_copies_and_installs_every_package_the_vault_imports() -> None:
    """Every first-party package a shipped package imports is in the image: a package of
    this distribution is copied before `pip install .`, one of another distribution of
    this repository (verifier/) is copied and installed too (review 34: the image could
    not start, audit/ imports cofre_evidence_verifier and witness/ was never copied)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    first_party = set(pyproject["tool"]["importlinter"]["root_packages"])
    shipped = {
        d.name
        for d in ROOT.iterdir()
        if (d / "__init__.py").is_file() and any(fnmatch(d.name, p) for p in include)
    }
    build = _build_stage()
    copied = {m[1]: m[2] for line in build if (m := re.fullmatch(r"COPY (\S+) \./(\S*)", line))}
    installs = [line for line in build if "pip install" in line and "-r " not in line]
    installed = {word for line in installs for word in line.split() if word.startswith(".")}
    assert "." in installed
    imported = set().union(*(_first_party_imports(ROOT / name, first_party) for name in shipped))
    assert {"cofre", "witness", "cofre_evidence_verifier"} <= imported
    for name in sorted(imported):
        if name in shipped:
            assert copied.get(name) == name, f"the Dockerfile does not COPY {name}"
            continue
        (source,) = ROOT.glob(f"*/src/{name}/__init__.py")
        distribution = source.parents[2].name
        assert copied.get(distribution) == distribution, f"no COPY {distribution} ({name})"
        assert f"./{distribution}" in installed, f"{distribution} ({name}) is not installed"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_manifests_match_the_kubernetes_schemas(target: str, version: str) -> None:
    for name, obj in _objects(target).items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target} {name} (Kubernetes {version}): {exc.message}")


def _config(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(objects["ConfigMap/cofre-config"]["data"]["cofre.toml"])


@pytest.mark.parametrize("target", TARGETS)
def test_deployment_drains_and_probes_as_the_vault_expects(target: str) -> None:
    objects = _objects(target)
    deployment = objects["Deployment/cofre"]
    server = _config(objects)["server"]
    pod = pod_spec(deployment)
    (vault,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in vault["ports"]}
    assert {k: v for k, v in ports.items() if not k.startswith("metrics")} == {
        "mtls": server["port"],
        "health": server["health_port"],
    }
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        assert vault[probe]["httpGet"] == {"path": path, "port": "health"}
    pre_stop = vault["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert server["drain_delay_seconds"] == 0  # the preStop hook does the waiting
    # preStop, the drain, the answers of the requests cancelled at its deadline and their
    # vault calls (api.lifecycle), then key wipe, HSM logout and telemetry flush (review
    # 34: 45 = 10 + 25 + 10 left none; drill 34: the 5 s of answers were left out, so the
    # documented 15 s of margin were 10).
    stop = pre_stop + server["drain_timeout_seconds"] + INTERRUPTED_SECONDS + LEFT_CALLS_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= stop + SHUTDOWN_MARGIN_SECONDS
    assert deployment["spec"]["replicas"] >= 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert objects["PodDisruptionBudget/cofre"]["spec"]["selector"]["matchLabels"] == selector


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def _workers(vault: dict[str, Any]) -> int:
    env = {e["name"]: e.get("value") for e in vault.get("env", [])}
    return int(env["COFRE_SERVER__WORKERS"])


@pytest.mark.parametrize("target", TARGETS)
def test_the_worker_count_is_explicit_and_fits_the_pod(target: str) -> None:
    """With no CPU limit the cgroup quota is "max" and the default worker count is every
    core of the host (16+ workers against a 2 Gi limit, 20 database connections each:
    review 34): the Deployment sets it, one worker per requested CPU, within the memory
    limit."""
    objects = _objects(target)
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    workers = _workers(vault)
    resources = vault["resources"]
    assert workers == math.ceil(_cpus(resources["requests"]["cpu"]))
    if "cpu" in resources["limits"]:
        assert workers <= math.ceil(_cpus(resources["limits"]["cpu"]))
    # The supervisor holds no key and little memory; count it as a worker anyway.
    assert _mebibytes(resources["limits"]["memory"]) >= (workers + 1) * WORKER_MEMORY_MIB


@pytest.mark.parametrize("target", TARGETS)
def test_every_worker_metrics_port_is_declared_and_reachable(target: str) -> None:
    """Worker N serves /metrics on metrics_port + N: each is a named container port (one
    scrape target each) and the monitoring namespace may reach it (review 34: only
    worker 0's was)."""
    objects = _objects(target)
    metrics = _config(objects)["server"]["metrics_port"]
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    workers = _workers(vault)
    declared = {p["name"]: p["containerPort"] for p in vault["ports"]}
    expected = {"metrics" if n == 0 else f"metrics-{n}": metrics + n for n in range(workers)}
    assert {k: v for k, v in declared.items() if k.startswith("metrics")} == expected
    ingress = objects["NetworkPolicy/cofre"]["spec"]["ingress"]
    (monitoring,) = [
        rule
        for rule in ingress
        if any(
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
            == "monitoring"
            for peer in rule.get("from", [])
        )
    ]
    allowed = [(p["port"], p.get("endPort", p["port"])) for p in monitoring["ports"]]
    for port in expected.values():
        assert any(low <= port <= high for low, high in allowed), port
    annotations = objects["Deployment/cofre"]["spec"]["template"]["metadata"]["annotations"]
    # One port annotation would collapse every worker's target onto worker 0's port.
    assert "prometheus.io/port" not in annotations


@pytest.mark.parametrize("target", TARGETS)
def test_a_rollout_fits_one_vault_per_node(target: str) -> None:
    """Required one-per-node anti-affinity with a surge pod needs a spare node: with as
    many nodes as replicas the surge pod stays Pending and the rollout stalls (review 34).
    The rollout replaces one pod at a time instead, within what the PDB already allows."""
    objects = _objects(target)
    deployment = objects["Deployment/cofre"]
    pod = pod_spec(deployment)
    (anti,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert anti["labelSelector"]["matchLabels"] == selector
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0
    budget = objects["PodDisruptionBudget/cofre"]["spec"]
    assert (
        1 <= rolling["maxUnavailable"] <= budget["maxUnavailable"] < deployment["spec"]["replicas"]
    )
    # An unready pod never holds the budget against a node drain.
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("target", TARGETS)
def test_the_api_is_open_to_the_adapter_tier_namespaces_only(target: str) -> None:
    """A pod label anyone with a namespace can set is not enough (review 34): the mTLS
    port also needs a namespace label that only cluster admins set (docs/operations.md)."""
    objects = _objects(target)
    ingress = objects["NetworkPolicy/cofre"]["spec"]["ingress"]
    (api,) = [rule for rule in ingress if any(p["port"] == 8443 for p in rule["ports"])]
    assert api["from"]
    for peer in api["from"]:
        namespaces = peer["namespaceSelector"]["matchLabels"]
        assert namespaces == {"cofre.dev/adapter-tier": "true"}
        assert peer["podSelector"]["matchLabels"] == {"cofre.dev/client": "true"}
    assert "`cofre.dev/adapter-tier`" in (ROOT / "docs" / "operations.md").read_text()


def _egress_443(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        rule
        for rule in policy["egress"]
        if any(p["port"] <= 443 <= p.get("endPort", p["port"]) for p in rule["ports"])
    ]


def _allows(rules: list[dict[str, Any]], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for rule in rules:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None or ip not in ipaddress.ip_network(block["cidr"]):
                continue
            if not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


@pytest.mark.parametrize("target", TARGETS)
def test_the_health_port_is_left_to_the_node(target: str) -> None:
    """Review 34: any pod of any namespace could reach the unauthenticated health port;
    the kubelet's probes come from the node, which a NetworkPolicy always allows."""
    for rule in _objects(target)["NetworkPolicy/cofre"]["spec"]["ingress"]:
        assert rule.get("from"), f"a rule open to every pod: {rule}"
        assert all(p["port"] != 8080 for p in rule.get("ports", [])), rule


@pytest.mark.parametrize("target", TARGETS)
def test_relays_and_witnesses_reach_outside_hosts_on_443(target: str) -> None:
    """The relay calls public acquirer hosts and witnesses belong to other parties: 443
    must reach outside the cluster (review 34: only the VPC's range was allowed), but not
    the node's metadata service nor another private range."""
    rules = _egress_443(_objects(target)["NetworkPolicy/cofre"]["spec"])
    assert _allows(rules, "93.184.215.14")  # any public address
    for private in ("169.254.169.254", "172.20.0.10", "192.168.1.1", "100.64.0.1"):
        assert not _allows(rules, private), private


@pytest.mark.parametrize("target", TARGETS)
def test_exports_stage_on_disk_of_a_documented_size(target: str) -> None:
    """An evidence export stages about twice a 31-day bundle in $TMPDIR: a 64 Mi memory
    emptyDir could not hold it and counted against the memory limit (review 34)."""
    pod = pod_spec(_objects(target)["Deployment/cofre"])
    (vault,) = pod["containers"]
    tmp = "/tmp"  # noqa: S108 - the path the pod mounts, not a file this test writes
    (mount,) = [m for m in vault["volumeMounts"] if m["mountPath"] == tmp]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "medium" not in volume["emptyDir"]  # disk, not the pod's memory
    size = volume["emptyDir"]["sizeLimit"]
    # Twice the 1 GiB a verifier accepts for a whole bundle (docs/auditor-guide.md).
    assert _mebibytes(size) >= 2 * 1024
    requests = vault["resources"]["requests"]
    assert _mebibytes(requests["ephemeral-storage"]) >= _mebibytes(size)
    assert f"`sizeLimit: {size}`" in (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(target: str) -> None:
    objects = _objects(target)
    assert {"Deployment/cofre", "Job/cofre-migrate"} <= set(workloads(objects))
    for name in workloads(objects):
        pod = pod_spec(objects[name])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            # Secrets are files, never environment values.
            assert all("valueFrom" not in env for env in container.get("env", []))
    policy = objects["NetworkPolicy/cofre"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert objects["Namespace/cofre"]["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"
    ] == ("restricted")


@pytest.mark.parametrize("target", TARGETS)
def test_config_and_env_are_valid_cofre_settings(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's cofre.toml plus the container's env load as Cofre settings (no
    unknown key, no conflicting secret sources), for the vault and the migration Job."""
    objects = _objects(target)
    config = tmp_path / "cofre.toml"
    config.write_text(objects["ConfigMap/cofre-config"]["data"]["cofre.toml"])
    for name in ("Deployment/cofre", "Job/cofre-migrate"):
        (container,) = pod_spec(objects[name])["containers"]
        for key in [k for k in os.environ if k.startswith("COFRE_")]:
            monkeypatch.delenv(key)
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        env.setdefault("COFRE_CONFIG", str(config))
        env["COFRE_CONFIG"] = str(config) if name.startswith("Deployment") else "/dev/null"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        if name.startswith("Job"):
            assert container["args"] == ["db", "migrate"]
            assert settings.database.url_file is not None
        else:
            assert container["args"] == ["serve"]
            assert settings.server.health_port is not None


def test_production_uses_cloudhsm_and_rds_iam() -> None:
    objects = _objects("overlays/production")
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    env = {e["name"]: e["value"] for e in vault["env"]}
    assert env["COFRE_HSM__LIBRARY"] == "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
    assert env["COFRE_DATABASE__IAM_AUTH"] == "true"
    assert vault["image"].endswith("-cloudhsm")
    assert (
        "eks.amazonaws.com/role-arn" in objects["ServiceAccount/cofre"]["metadata"]["annotations"]
    )


def test_every_referenced_secret_and_configmap_is_documented() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for target in TARGETS:
        objects = _objects(target)
        for name in workloads(objects):
            for volume in pod_spec(objects[name])["volumes"]:
                ref = volume.get("secret", {}).get("secretName") or volume.get("configMap", {}).get(
                    "name"
                )
                if ref and ref != "cofre-config":
                    assert f"`{ref}`" in docs, f"{target}: {ref} is not in docs/operations.md"


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("target", TARGETS)
def test_the_cde_namespace_denies_what_no_policy_allows(target: str) -> None:
    """Infra review: only pods labelled `app.kubernetes.io/name: cofre` had a policy, so any
    other pod in the CDE namespace (a debug pod, an archive CronJob) was open both ways."""
    policies = [o for o in _objects(target).values() if o["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy in the namespace"


@pytest.mark.parametrize("target", TARGETS)
def test_the_migration_job_reaches_only_dns_and_the_database(target: str) -> None:
    """Infra review: the Job holding the owner role's URL shared the vault's policy, so it
    could reach any public address on 443 and was open to the adapter tier on 8443."""
    objects = _objects(target)
    labels = objects["Job/cofre-migrate"]["spec"]["template"]["metadata"]["labels"]
    policies = [o for o in objects.values() if o["kind"] == "NetworkPolicy"]
    selecting = [p for p in policies if _selects(p, labels)]
    assert selecting
    for policy in selecting:
        spec = policy["spec"]
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        assert not spec.get("ingress"), policy["metadata"]["name"]
        ports = {
            (p["port"], p.get("endPort", p["port"]))
            for r in spec.get("egress", [])
            for p in r["ports"]
        }
        assert ports <= {(53, 53), (5432, 5432)}, policy["metadata"]["name"]
    vault = objects["NetworkPolicy/cofre"]["spec"]
    (database,) = [r for r in vault["egress"] if any(p["port"] == 5432 for p in r["ports"])]
    migrate = objects["NetworkPolicy/cofre-migrate"]["spec"]["egress"]
    assert [r["to"] for r in migrate if any(p["port"] == 5432 for p in r["ports"])] == [
        database["to"]
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_the_migration_job_gets_no_aws_identity(target: str) -> None:
    """Infra review: the Job ran as the vault's service account, which production
    annotates for IRSA, so it received AWS credentials (rds-db:connect as the vault's
    user) it never uses: it connects with the owner role's URL."""
    objects = _objects(target)
    job = pod_spec(objects["Job/cofre-migrate"])
    vault = pod_spec(objects["Deployment/cofre"])
    assert job["serviceAccountName"] != vault["serviceAccountName"]
    account = objects[f"ServiceAccount/{job['serviceAccountName']}"]
    assert not account["metadata"].get("annotations")
    assert account["automountServiceAccountToken"] is False
    assert job["automountServiceAccountToken"] is False


def _image_env() -> dict[str, str]:
    """The runtime stage's ENV (deploy/Dockerfile), continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    pairs = [line.removeprefix("ENV ") for line in stage.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(pairs)))


@pytest.mark.parametrize("target", TARGETS)
def test_the_config_file_is_what_the_pod_runs_with(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's ENV sets listeners and the data directory, and a variable beats
    COFRE_CONFIG's file (cofre.settings): a port changed in the ConfigMap alone would be
    overridden in silence, the container ports and probes pointing at the file's. So
    the image's values, the pod's env and the ConfigMap must agree, and the data
    directory must be a mounted volume (the root filesystem is read-only)."""
    objects = _objects(target)
    text = objects["ConfigMap/cofre-config"]["data"]["cofre.toml"]
    config = tmp_path / "cofre.toml"
    config.write_text(text)
    pod = pod_spec(objects["Deployment/cofre"])
    (vault,) = pod["containers"]
    for key in [k for k in os.environ if k.startswith("COFRE_")]:
        monkeypatch.delenv(key)
    image = {k: v for k, v in _image_env().items() if k.startswith("COFRE_")}
    for key, value in {**image, **{e["name"]: e["value"] for e in vault["env"]}}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    server = load_settings().server
    wanted = tomllib.loads(text)["server"]
    for name in ("host", "port", "health_host", "health_port", "metrics_host", "metrics_port"):
        assert getattr(server, name) == wanted[name], f"{name}: the image's ENV wins"
    mounts = {m["mountPath"] for m in vault["volumeMounts"]}
    assert image["COFRE_DATA_DIR"] in mounts


def test_the_witness_this_repository_ships_is_reachable_or_its_port_documented() -> None:
    """Drill 34: `cofre witness serve` listens on 7380 by default, and the vault's egress
    allows public addresses on 443 only: a witness run as docs/operations.md shows was
    unreachable from the cluster (the publisher failing, never readiness), and the
    Kubernetes section did not say to open its port."""
    port = WitnessConfig.__dataclass_fields__["port"].default
    assert isinstance(port, int)
    for target in TARGETS:
        egress = _objects(target)["NetworkPolicy/cofre"]["spec"]["egress"]
        public = [
            rule
            for rule in egress
            if any(p["port"] <= port <= p.get("endPort", p["port"]) for p in rule["ports"])
        ]
        if _allows(public, "93.184.215.14"):
            continue
        docs = (ROOT / "docs" / "operations.md").read_text()
        section = docs.split("## Deploy on Kubernetes", 1)[1].split("\n### ", 1)[0]
        assert f"`cofre witness serve` listens on {port}" in section, target


MIGRATE_SELECTOR = "app.kubernetes.io/component=migrate"


def test_an_upgrade_migrates_before_the_rollout_starts() -> None:
    """Drill 34: the Upgrade steps applied the whole overlay and then waited for the Job,
    so the Deployment rolled at once: with `maxSurge: 0` an old pod stopped, its new
    replacement refused the older schema (`schema_mismatch`) and restarted in back-off
    for as long as the migration ran. The Job (with what it needs) is applied alone
    first, by its label, and waited for."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    upgrade = docs.split("### Upgrade\n", 1)[1].split("\n**Upgrade note", 1)[0]
    commands = [line.strip() for line in upgrade.splitlines() if "kubectl" in line]
    applies = [i for i, c in enumerate(commands) if "kubectl apply -k" in c]
    (wait,) = [i for i, c in enumerate(commands) if "condition=complete job/cofre-migrate" in c]
    assert applies
    assert f"-l {MIGRATE_SELECTOR}" in commands[applies[0]]
    assert applies[0] < wait < applies[-1]
    assert "-l " not in commands[applies[-1]]
    key, value = MIGRATE_SELECTOR.split("=")
    for target in TARGETS:
        selected = {
            name
            for name, obj in _objects(target).items()
            if obj["metadata"].get("labels", {}).get(key) == value
        }
        job = pod_spec(_objects(target)["Job/cofre-migrate"])
        assert {
            "Job/cofre-migrate",
            f"ServiceAccount/{job['serviceAccountName']}",
            "NetworkPolicy/cofre-migrate",
        } <= selected, target
        assert not any(name.startswith("Deployment/") for name in selected)


# Start-up past the HSM's two bounded waits: imports, the database, the listeners.
START_MARGIN_SECONDS = 30


@pytest.mark.parametrize("target", TARGETS)
def test_the_startup_probe_outwaits_the_hsm_start_bound(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health listener opens only after the library's identity check and each
    worker's library load (and first key adoption), each bounded by COFRE_HSM__INIT_TIMEOUT_SECONDS
    (cofre.settings): the startup probe must wait longer than both, or a slow CloudHSM
    client restarts the pod before it could listen unready."""
    objects = _objects(target)
    bound = pod_settings(objects, tmp_path, monkeypatch).hsm.init_timeout_seconds
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    probe = vault["startupProbe"]
    assert probe["httpGet"] == {"path": "/livez", "port": "health"}
    patience = (
        probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    )
    assert patience >= 2 * bound + START_MARGIN_SECONDS
