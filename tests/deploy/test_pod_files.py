"""deploy/k8s: the files the kubelet puts in a pod, as the process that reads them sees
them. Secret and ConfigMap volumes are written by the kubelet, owned by root; the
process runs as user 10001. Whether it can read them is decided by the volume's mode
and the pod's `fsGroup`, which no schema check looks at."""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.test_manifests import K8S, ROOT, TARGETS
from tests.support.kustomize import WORKLOADS, pod_settings, pod_spec, render

# The image's `USER 10001:10001` (deploy/Dockerfile), when the pod names no user.
IMAGE_UID = 10001
# A Secret or ConfigMap volume without `defaultMode`.
DEFAULT_MODE = 0o644
# What the kubelet adds to a read-only volume's files when the pod has an `fsGroup`
# (pkg/volume/volume_linux.go, `roMask`), after making that group the files' group.
FS_GROUP_READ = 0o440


def _identity(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, set[int]]:
    """The process's user and groups: the container's context over the pod's, the
    image's user when neither names one; `fsGroup` and `supplementalGroups` are extra
    groups of every container."""
    pod_context = pod.get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    uid = int(context.get("runAsUser", IMAGE_UID))
    groups = {int(context.get("runAsGroup", IMAGE_UID))}
    groups |= {int(g) for g in pod_context.get("supplementalGroups", [])}
    if "fsGroup" in pod_context:
        groups.add(int(pod_context["fsGroup"]))
    return uid, groups


def _files(pod: dict[str, Any], volume: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(key, mode, group) of each file a Secret or ConfigMap volume holds, as the kubelet
    writes it: owner root, group the pod's `fsGroup` (else root), mode the item's or
    the volume's `defaultMode`, plus group read under an `fsGroup`
    (kubernetes/kubernetes#57923, #81089)."""
    source = volume.get("secret") or volume.get("configMap") or {}
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    mode = int(source.get("defaultMode", DEFAULT_MODE))
    items = source.get("items") or [{"key": "*", "path": "*"}]
    files = []
    for item in items:
        item_mode = int(item.get("mode", mode))
        if fs_group is None:
            files.append((item["key"], item_mode, 0))
        else:
            files.append((item["key"], item_mode | FS_GROUP_READ, int(fs_group)))
    return files


def _readable(mode: int, group: int, uid: int, groups: set[int]) -> bool:
    if uid == 0 or mode & stat.S_IROTH:
        return True
    return group in groups and bool(mode & stat.S_IRGRP)


def _mounted_volumes(obj: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    pod = pod_spec(obj)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return [
        (container, volumes[mount["name"]], mount["mountPath"])
        for container in [*pod["containers"], *pod.get("initContainers", [])]
        for mount in container.get("volumeMounts", [])
        if {"secret", "configMap"} & set(volumes[mount["name"]])
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_every_mounted_secret_and_config_file_is_readable_by_the_process(target: str) -> None:
    """Drill 34: the migration Job mounted its Secret (the owner role's URL) with
    `defaultMode: 0400` and no `fsGroup`, so the file was root's alone and `cofre db
    migrate`, as user 10001, could not read it: the Job failed on every first install
    and every upgrade, and `cofre serve`, which never migrates, refused the schema."""
    for name, obj in {
        f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / target)
    }.items():
        if obj["kind"] not in WORKLOADS:
            continue
        pod = pod_spec(obj)
        for container, volume, path in _mounted_volumes(obj):
            uid, groups = _identity(pod, container)
            for key, mode, group in _files(pod, volume):
                assert _readable(mode, group, uid, groups), (
                    f"{target} {name}: {path}/{key} is mode {mode:04o}, group {group}: "
                    f"user {uid} (groups {sorted(groups)}) cannot read it"
                )


@pytest.mark.parametrize("target", TARGETS)
def test_no_mounted_secret_is_readable_by_every_user(target: str) -> None:
    """`cofre serve` refuses a PIN file or TLS key that other users can read
    (`cofre.filemodes.refuse_readable_secrets`): a Secret volume must not be `o+r`."""
    for obj in render(K8S / target):
        if obj["kind"] not in WORKLOADS:
            continue
        pod = pod_spec(obj)
        for _container, volume, path in _mounted_volumes(obj):
            if "secret" not in volume:
                continue
            for key, mode, _group in _files(pod, volume):
                assert not mode & stat.S_IROTH, f"{target}: {path}/{key} is mode {mode:04o}"


def _documented_keys(docs: str, secret: str) -> set[str]:
    """The keys docs/operations.md's table of objects to create lists for `secret`."""
    (row,) = [line for line in docs.splitlines() if line.startswith(f"| Secret `{secret}` |")]
    return set(re.findall(r"`([^`]+)`", row.split("|")[2]))


def test_every_documented_ca_file_is_in_a_documented_secret() -> None:
    """Drill 34: docs/operations.md told production to verify RDS with
    `sslrootcert=/etc/cofre/tls/rds-ca.pem`, but its table had no `rds-ca.pem` in
    `cofre-tls` (what is mounted there), so a cluster built from it had no such file and
    every connection failed; nor could the migration Job, which mounts only its own
    Secret, verify the server with that path."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    paths = set(re.findall(r"sslrootcert=(/[^`&)\s]+)", docs))
    assert paths
    mounts = {
        (mount, volume["secret"]["secretName"])
        for obj in render(K8S / "overlays/production")
        if obj["kind"] in WORKLOADS
        for _container, volume, mount in _mounted_volumes(obj)
        if "secret" in volume
    }
    for path in sorted(paths):
        file = PurePosixPath(path)
        secrets = [secret for mount, secret in mounts if PurePosixPath(mount) == file.parent]
        assert secrets, f"{path}: no Secret is mounted at {file.parent}"
        for secret in secrets:
            assert file.name in _documented_keys(docs, secret), f"{path}: not a key of {secret}"


def test_the_cloudhsm_client_logs_where_a_read_only_root_can() -> None:
    """Drill 34: the CloudHSM PKCS#11 library (Client SDK 5) logs by default to
    /opt/cloudhsm/run/cloudhsm-pkcs11.log (AWS, "Client SDK 5 logging"), on the pod's
    read-only root filesystem, and docs/operations.md had the client configuration made
    with `configure-pkcs11 -a <HSM IP>` alone. Made with `--log-type term` it logs to
    the container's output; otherwise /opt/cloudhsm/run must be a writable mount."""
    objects = {
        f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / "overlays/production")
    }
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    assert vault["securityContext"]["readOnlyRootFilesystem"] is True
    if any(m["mountPath"] == "/opt/cloudhsm/run" for m in vault["volumeMounts"]):
        return
    docs = (ROOT / "docs" / "operations.md").read_text()
    (row,) = [
        line for line in docs.splitlines() if line.startswith("| ConfigMap `cloudhsm-pkcs11` |")
    ]
    commands = re.findall(r"`(configure-pkcs11 [^`]*)`", row)
    assert commands
    assert all("--log-type term" in command for command in commands), commands


# What `kubectl exec` finds on the runtime image's PATH: dash (Essential: every Debian
# image has it), the venv's `cofre` and Debian's python3. Not `kill`: procps (priority
# important) is in no slim image, and the Dockerfile installs python3 and ca-certificates
# only, neither of which pulls it in.
IMAGE_PROGRAMS = {"sh", "cofre", "python3"}


def test_every_documented_exec_runs_a_program_the_image_has() -> None:
    """Drill 34: docs/operations.md reloaded a pod with `kubectl exec deploy/cofre --
    kill -HUP 1`; the image has no `kill` program (the shell's builtin is one, through
    `sh -c`), so the certificate rotation's reload failed with "executable file not
    found"."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    programs = [
        (document.name, match.group(1))
        for document in documents
        for match in re.finditer(r"kubectl[^`\n]* exec [^`\n]*?-- (\S+)", document.read_text())
    ]
    assert programs
    for document, program in programs:
        assert program in IMAGE_PROGRAMS, f"{document}: `kubectl exec … -- {program}`"


def test_the_cloudhsm_overlay_names_the_cloudhsm_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drill 34: the production overlay loads the CloudHSM library but kept the base's
    `token_label = "cofre"` (SoftHSM's); Client SDK 5 has one slot whose token is
    labelled `hsm1` (docs/cloudhsm.md), and the vault finds its token by label only, so
    production could never open a session."""
    objects = {
        f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / "overlays/production")
    }
    hsm = pod_settings(objects, tmp_path, monkeypatch).hsm
    cloudhsm = (ROOT / "docs" / "cloudhsm.md").read_text()
    (block,) = re.findall(r"```toml\n(\[hsm\].*?)```", cloudhsm, re.S)
    documented = tomllib.loads(block)["hsm"]
    assert str(hsm.library) == documented["library"]
    assert hsm.token_label == documented["token_label"]


def test_a_settings_change_is_documented_to_need_a_restart() -> None:
    """Drill 34: cofre.toml is mounted by subPath, which the kubelet never updates, and
    settings are read at start; `kubectl apply -k` after editing the ConfigMap leaves the
    pod template as it was, so nothing restarts and the change never takes effect.
    docs/operations.md did not say so."""
    objects = {f"{o['kind']}/{o['metadata']['name']}": o for o in render(K8S / "base")}
    (vault,) = pod_spec(objects["Deployment/cofre"])["containers"]
    (mount,) = [m for m in vault["volumeMounts"] if m["mountPath"] == "/etc/cofre/cofre.toml"]
    assert "subPath" in mount
    docs = (ROOT / "docs" / "operations.md").read_text()
    section = docs.split("## Deploy on Kubernetes", 1)[1].split("\n### ", 1)[0]
    assert "`cofre-config`" in section
    assert "kubectl -n cofre rollout restart deployment/cofre" in section
