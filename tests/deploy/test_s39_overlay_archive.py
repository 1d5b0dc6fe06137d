"""deploy/k8s, session 39 (note 37's open points): every overlay that runs the audit
archive must give it the means to reach its own bucket.

Staging ran `cofre-audit-archive` hourly with no IRSA role on its service account (boto3
found no credentials: every run failed, and nothing was archived, PCI DSS 10.5.1), and
the base `cofre.toml` named one bucket for every overlay, so staging, had it had
credentials, would have shipped its log into production's bucket (and `retire` would
have checked staging's log against production's archive). The manifests are rendered
offline as in test_manifests.py; each workload's settings are what its container loads
(`tests.support.kustomize.pod_settings`: the ConfigMap's `cofre.toml` and its env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.test_manifests import _objects
from tests.support.kustomize import pod_settings, pod_spec

OVERLAYS = ("overlays/staging", "overlays/production")
# The workloads that read `[archive]`: the vault (an export covering a retired
# registration reads the archived originals) and the two CronJobs.
READERS = ("Deployment/cofre", "CronJob/cofre-audit-archive", "CronJob/cofre-audit-retire")
IRSA = "eks.amazonaws.com/role-arn"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("workload", READERS)
def test_each_reader_of_the_archive_runs_under_an_aws_role_of_its_own(
    overlay: str, workload: str
) -> None:
    objects = _objects(overlay)
    account = pod_spec(objects[workload])["serviceAccountName"]
    annotations = objects[f"ServiceAccount/{account}"]["metadata"].get("annotations", {})
    assert annotations.get(IRSA, "").startswith("arn:aws:iam::"), (overlay, account)
    roles = {
        objects[f"ServiceAccount/{pod_spec(objects[w])['serviceAccountName']}"]["metadata"][
            "annotations"
        ][IRSA]
        for w in READERS
    }
    assert len(roles) == len(READERS)  # one role each, as production's trust policies name


def test_each_environment_archives_into_a_bucket_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archives: dict[str, set[tuple[str | None, str | None]]] = {}
    for overlay in OVERLAYS:
        objects = _objects(overlay)
        archives[overlay] = set()
        for workload in READERS:
            archive = pod_settings(objects, tmp_path, monkeypatch, workload).archive
            assert archive.bucket, (overlay, workload)
            assert archive.endpoint_url, (overlay, workload)
            archives[overlay].add((archive.bucket, archive.endpoint_url))
        # the vault and both jobs of one environment read the same archive
        assert len(archives[overlay]) == 1, (overlay, archives[overlay])
    (staging,), (production,) = archives.values()
    assert staging[0] != production[0]
    assert staging[1] != production[1]  # each VPC's own S3 endpoint
