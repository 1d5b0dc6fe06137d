"""deploy/k8s, session 37: the audit log's archive and retention (PCI DSS 10.5.1) as
CronJobs beside the vault. docs/operations.md told operators to run `cofre audit
archive` hourly and `cofre audit retire` monthly as the owner, and an evidence export
that covers a retirement reads the archived originals from the bucket, but deploy/ ran
neither job and gave the vault no bucket: the online log was never archived, never
retired, and such an export marked every carried original `unavailable`. The
manifests are rendered offline as in test_manifests.py; the checks every pod of the
vault's image passes (security contexts, CDE nodes, service links, readable Secret
files, schemas) cover these CronJobs through `tests.support.kustomize.workloads`."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cofre_cli.commands import audit as audit_commands
from tests.deploy.test_manifests import (
    ROOT,
    TARGETS,
    _allows,
    _egress_443,
    _image_env,
    _objects,
    _selects,
)
from tests.support.kustomize import pod_settings, pod_spec, workloads

ARCHIVE = "CronJob/cofre-audit-archive"
RETIRE = "CronJob/cofre-audit-retire"
CRONJOBS = (ARCHIVE, RETIRE)
# The HSM's ports (CloudHSM SDK 5) and what a pod needs to log in to it.
HSM_PORTS = range(2223, 2226)
HSM_FILES = ("hsm-pin", "cloudhsm-pkcs11.cfg")
PUBLIC = "93.184.215.14"


def _docs() -> str:
    return (ROOT / "docs" / "operations.md").read_text()


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _cron(schedule: str) -> list[str]:
    fields = schedule.split()
    assert len(fields) == 5, schedule
    return fields


@pytest.mark.parametrize("target", TARGETS)
def test_the_archive_runs_hourly_and_retire_monthly_on_the_2nd_one_at_a_time(
    target: str,
) -> None:
    """docs/operations.md "Audit growth": archive hourly, retire monthly on the 2nd; a
    second run started beside a slow one would race it for the same segment (archive)
    or the same partition (retire), so neither overlaps itself."""
    objects = _objects(target)
    assert set(CRONJOBS) <= set(workloads(objects))
    for name in CRONJOBS:
        spec = objects[name]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["timeZone"] == "Etc/UTC", name
        assert pod_spec(objects[name])["restartPolicy"] == "Never", name
    minute, *hourly = _cron(objects[ARCHIVE]["spec"]["schedule"])
    assert minute.isdigit()
    assert 0 <= int(minute) < 60
    assert hourly == ["*", "*", "*", "*"]
    # A run ends within its hour: a stuck one never holds the next behind Forbid.
    assert objects[ARCHIVE]["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 3600
    minute, hour, day, month, weekday = _cron(objects[RETIRE]["spec"]["schedule"])
    assert minute.isdigit()
    assert hour.isdigit()
    assert (day, month, weekday) == ("2", "*", "*")
    assert _container(objects[ARCHIVE])["args"] == ["audit", "archive"]
    assert _container(objects[RETIRE])["args"][:2] == ["audit", "retire"]


@pytest.mark.parametrize("target", TARGETS)
def test_each_cronjob_and_the_vault_load_the_archive_settings(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load_settings` refuses an unknown COFRE_ variable or key at start: the ConfigMap
    and each pod's env (with the image's ENV) load, every pod reads the same
    [archive] (the vault's own, for the exports that read the archive), from the
    ConfigMap mounted where COFRE_CONFIG points, and each job connects as its role."""
    objects = _objects(target)
    image = {k: v for k, v in _image_env().items() if k.startswith("COFRE_")}
    archives = set()
    for name in ("Deployment/cofre", *CRONJOBS):
        container = _container(objects[name])
        (config,) = [
            m
            for m in container["volumeMounts"]
            if m["mountPath"] == _env(container)["COFRE_CONFIG"]
        ]
        volumes = {v["name"]: v for v in pod_spec(objects[name])["volumes"]}
        assert volumes[config["name"]]["configMap"]["name"] == "cofre-config", name
        settings = pod_settings(objects, tmp_path, monkeypatch, name)
        archive = settings.archive
        assert archive.bucket, name
        assert archive.region, name
        assert (archive.endpoint_url or "").startswith("https://"), name
        archives.add(archive.model_dump_json())
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert settings.database.url_file is not None
        assert str(settings.database.url_file.parent) in mounts, name
        # The data directory the image's ENV names is a volume (a read-only root).
        assert image["COFRE_DATA_DIR"] in mounts, name
    assert len(archives) == 1
    # The retirement connects as the owner, as the migration Job: its URL file, its mount.
    migrate = _container(objects["Job/cofre-migrate"])
    retire = _container(objects[RETIRE])
    owner = _env(migrate)["COFRE_DATABASE__URL_FILE"]
    assert _env(retire)["COFRE_DATABASE__URL_FILE"] == owner
    # The archive connects as the vault does (`cofre_vault`: the same file, the same
    # RDS IAM settings in production).
    vault = _env(_container(objects["Deployment/cofre"]))
    archive_env = _env(_container(objects[ARCHIVE]))
    for key in ("COFRE_DATABASE__IAM_AUTH", "COFRE_DATABASE__IAM_REGION"):
        assert archive_env.get(key) == vault.get(key), f"{target}: {key}"


def _secret_keys(obj: dict[str, Any]) -> dict[str, set[str] | None]:
    """Each Secret a workload mounts, with the keys it projects (None: all of them)."""
    keys: dict[str, set[str] | None] = {}
    for volume in pod_spec(obj)["volumes"]:
        if "secret" in volume:
            items = volume["secret"].get("items")
            keys[volume["secret"]["secretName"]] = (
                {i["key"] for i in items} if items is not None else None
            )
    return keys


@pytest.mark.parametrize("target", TARGETS)
def test_the_cronjobs_hold_only_the_secrets_their_role_needs(target: str) -> None:
    """The archive runs as `cofre_vault`: of the vault's Secrets it projects the
    database URL (and in production the RDS CA), never the HSM PIN nor the server's TLS
    key. The retirement runs as the owner and takes that URL as the migration Job does,
    from the `cofre-migrate` Secret at the same path, and none of the vault's Secrets."""
    objects = _objects(target)
    archive = _secret_keys(objects[ARCHIVE])
    assert archive.get("cofre-secrets") == {"database-url"}, archive
    assert set(archive) <= {"cofre-secrets", "cofre-tls"}
    assert archive.get("cofre-tls", {"rds-ca.pem"}) == {"rds-ca.pem"}, archive
    retire = _secret_keys(objects[RETIRE])
    migrate = _secret_keys(objects["Job/cofre-migrate"])
    assert retire == migrate, (retire, migrate)
    assert not set(retire) & set(_secret_keys(objects["Deployment/cofre"]))
    owner_mounts = [
        {m["mountPath"] for m in _container(objects[name])["volumeMounts"]}
        for name in ("Job/cofre-migrate", RETIRE)
    ]
    assert "/run/secrets/cofre-owner" in owner_mounts[0] & owner_mounts[1]


@pytest.mark.parametrize("target", TARGETS)
def test_neither_job_gets_the_hsm(target: str) -> None:
    """`cofre audit archive` opens no HSM (its entries are queued and signed by the
    vault's sequencer); `cofre audit retire` asks the HSM only for the audit public key
    when `--public-key` is not given. Neither job gets the PIN, the CloudHSM client
    configuration, a PKCS#11 setting or a route to the HSM's ports."""
    assert "open_hsm" not in inspect.getsource(audit_commands.audit_archive)
    helper = inspect.getsource(audit_commands._public_key_pem)
    assert helper.index("return read_pem(path)") < helper.index("vault_audit_signer(settings, ")
    objects = _objects(target)
    args = _container(objects[RETIRE])["args"]
    key = Path(args[args.index("--public-key") + 1])
    (mount,) = [
        m for m in _container(objects[RETIRE])["volumeMounts"] if Path(m["mountPath"]) == key.parent
    ]
    volumes = {v["name"]: v for v in pod_spec(objects[RETIRE])["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == "cofre-audit-key"
    for name in CRONJOBS:
        container = _container(objects[name])
        assert not [k for k in _env(container) if k.startswith("COFRE_HSM__")], name
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert not [p for p in mounted if any(f in p for f in HSM_FILES)], name
        assert "/opt/cloudhsm/etc/cloudhsm-pkcs11.cfg" not in mounted, name
        for secret, keys in _secret_keys(objects[name]).items():
            assert secret != "cofre-secrets" or (keys is not None and "hsm-pin" not in keys)


def _policies_of(objects: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
    labels = objects[name]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return [
        o
        for o in objects.values()
        if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"] and _selects(o, labels)
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_the_cronjobs_reach_dns_the_database_and_the_vpc_s_endpoints_alone(target: str) -> None:
    """Under `default-deny` a new pod reaches nothing: each job has a policy of its own
    selecting it (not the vault's, which opens public 443 and the HSM), no ingress, and
    egress to CoreDNS, PostgreSQL and HTTPS to the PCI VPC's block (the S3 interface
    endpoint and STS's) only, the same block the vault's database rule names."""
    objects = _objects(target)
    vault = objects["NetworkPolicy/cofre"]["spec"]
    (database,) = [r for r in vault["egress"] if any(p["port"] == 5432 for p in r["ports"])]
    for name in CRONJOBS:
        policies = _policies_of(objects, name)
        assert [p["metadata"]["name"] for p in policies] == [name.split("/")[1]], name
        for policy in policies:
            spec = policy["spec"]
            assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
            assert not spec.get("ingress"), name
            ports = {
                (p["port"], p.get("endPort", p["port"])) for r in spec["egress"] for p in r["ports"]
            }
            assert ports <= {(53, 53), (5432, 5432), (443, 443)}, name
            assert not [p for p in ports if any(h in range(p[0], p[1] + 1) for h in HSM_PORTS)]
            https = _egress_443(spec)
            assert https, name
            assert all(r["to"] == database["to"] for r in https), name
            assert not _allows(https, PUBLIC), name
            assert not _allows(https, "169.254.169.254"), name


@pytest.mark.parametrize("target", TARGETS)
def test_each_cronjob_runs_the_vault_s_image_as_an_account_of_its_own(target: str) -> None:
    """The overlays rewrite the CronJobs' image as the vault's (the renderer follows a
    CronJob's jobTemplate), and each job runs as its own service account: production
    annotates it for an IRSA role of its own, never the vault's or another job's."""
    objects = _objects(target)
    image = _container(objects["Deployment/cofre"])["image"]
    roles = []
    for name in ("Deployment/cofre", "Job/cofre-migrate", *CRONJOBS):
        assert _container(objects[name])["image"] == image, name
        account = objects[f"ServiceAccount/{pod_spec(objects[name])['serviceAccountName']}"]
        assert account["automountServiceAccountToken"] is False
        roles.append(account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn"))
    accounts = [pod_spec(objects[n])["serviceAccountName"] for n in CRONJOBS]
    assert accounts == ["cofre-audit-archive", "cofre-audit-retire"]
    if target == "overlays/production":
        vault, migrate, archive, retire = roles
        assert migrate is None
        assert archive, target
        assert retire, target
        assert len({vault, archive, retire}) == 3


def _policy_actions(policy: dict[str, Any]) -> dict[str, set[str]]:
    """Each resource of an IAM policy with the actions allowed on it."""
    allowed: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            allowed.setdefault(resource, set()).update(
                [actions] if isinstance(actions, str) else actions
            )
    return allowed


def test_the_archive_role_s_iam_policy_is_documented_and_least_privilege() -> None:
    """docs/operations.md gives the archive job's IAM policy as JSON: the object actions
    on the prefix, the bucket checks on the bucket, listing limited to the prefix, and
    nothing that deletes, shortens a lock or rewrites the bucket's configuration."""
    blocks = re.findall(r"```json\n\s*(\{[^`]*?)```", _docs())
    (policy,) = [json.loads(b) for b in blocks if "s3:PutObjectRetention" in b]
    allowed = _policy_actions(policy)
    objects = {r: a for r, a in allowed.items() if r.endswith("/*")}
    (prefix,) = objects
    assert prefix.endswith("/cofre-audit/*")
    assert objects[prefix] == {"s3:PutObject", "s3:PutObjectRetention", "s3:GetObject"}
    bucket = prefix.split("/", 1)[0]
    assert allowed[bucket] == {
        "s3:ListBucket",
        "s3:GetBucketObjectLockConfiguration",
        "s3:GetLifecycleConfiguration",
    }
    (listing,) = [s for s in policy["Statement"] if "s3:ListBucket" in s["Action"]]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["cofre-audit/*"]
    assert listing["Action"] == "s3:ListBucket"
    every = set().union(*allowed.values()) - {"rds-db:connect"}
    assert not [a for a in every if "Delete" in a or "Bypass" in a or a.startswith("s3:PutBucket")]
    section = _docs().split("## Deploy on Kubernetes", 1)[1]
    for account in ("cofre-audit-archive", "cofre-audit-retire"):
        assert f"system:serviceaccount:cofre:{account}" in section, account
    assert "| ConfigMap `cofre-audit-key` | `audit.pem` |" in section
