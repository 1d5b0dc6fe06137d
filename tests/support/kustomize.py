"""A small, offline renderer for the subset of Kustomize that deploy/k8s uses:
`resources` (files and directories), `namespace`, `images` and strategic-merge `patches`
(merge keys as Kubernetes defines them for the fields we patch). No kustomize binary is
installable here (not in Debian 12, not on PyPI as a maintained wheel), so the suite
renders with this and validates the result against the official schemas; it refuses
any kustomization field it does not implement, so it cannot silently drift."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cofre.settings import Settings, load_settings

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Strategic-merge keys of the list fields the overlays patch (others are replaced).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` would produce for our subset."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise AssertionError(f"{directory}: kustomization fields not rendered here: {unknown}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch_entry in spec.get("patches", []):
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        target = _find(objects, patch["kind"], patch["metadata"]["name"])
        merged = _merge(target, patch)
        objects[objects.index(target)] = merged
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else name
    return objects


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"patch target {kind}/{name} not found")


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if "jobTemplate" in spec:  # a CronJob: its Job's pod
        spec = spec["jobTemplate"].get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


# The kinds whose objects run pods of the vault's image (a CronJob's through its Job).
WORKLOADS = ("Deployment", "Job", "CronJob")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, a Job or a CronJob (its jobTemplate's)."""
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def workloads(objects: dict[str, dict[str, Any]]) -> list[str]:
    """The `Kind/name` keys of the rendered `objects` that run pods."""
    return [name for name, obj in objects.items() if obj["kind"] in WORKLOADS]


def pod_settings(
    objects: dict[str, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workload: str = "Deployment/cofre",
) -> Settings:
    """The settings the container of `workload` (the vault's by default) of rendered
    `objects` (keyed `Kind/name`) loads: the `cofre-config` ConfigMap's `cofre.toml` and
    its `env`, and no COFRE_ variable of this process."""
    config = tmp_path / "cofre.toml"
    config.write_text(objects["ConfigMap/cofre-config"]["data"]["cofre.toml"])
    (vault,) = pod_spec(objects[workload])["containers"]
    for key in [k for k in os.environ if k.startswith("COFRE_")]:
        monkeypatch.delenv(key)
    for env in vault["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    return load_settings()
