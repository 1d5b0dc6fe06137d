"""`cofre audit archive | verify-archive | retire | partitions` as an operator runs them,
against the real PostgreSQL and moto's in-process S3 (no network, no AWS account). The
commands run in-process (typer's runner) because moto's S3 lives in this process."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from audit.archive import segment_key
from audit.store import AuditStore
from cofre_cli.main import app
from infra_pci.objectstore import S3ObjectStore, add_months
from tests.audit.conftest import BUCKET, s3, signer
from tests.audit.test_archive import sequence
from tests.audit.test_partitions import append_at
from tests.audit.test_retention import NOW, OLD, pg
from vault.signing import HSMTreeHeadSigner

__all__ = ["pg", "s3", "signer"]  # fixtures shared with tests/audit


def _archive_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg: Engine, bucket: str, **archive: str
) -> None:
    """The environment `cofre audit ...` reads: an empty config file, `pg`, `bucket`,
    and `archive`'s COFRE_ARCHIVE__* settings."""
    config = tmp_path / "cofre.toml"
    config.write_text("", encoding="utf-8")
    for name, value in {
        "COFRE_CONFIG": str(config),
        "COFRE_DATA_DIR": str(tmp_path / "data"),
        "COFRE_DATABASE__URL": pg.url.render_as_string(hide_password=False),
        "COFRE_ARCHIVE__BUCKET": bucket,
        **{f"COFRE_ARCHIVE__{key}": v for key, v in archive.items()},
    }.items():
        monkeypatch.setenv(name, value)


def test_archive_verify_and_retire_from_the_command_line(
    pg: Engine,
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _archive_settings(monkeypatch, tmp_path, pg, BUCKET, SEGMENT_MAX_ENTRIES="8")
    pem = tmp_path / "audit.pem"
    pem.write_bytes(signer.public_key_pem())
    runner = CliRunner()

    def cofre(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    append_at(pg, OLD[0], 12)
    append_at(pg, NOW, 3)
    sequence(pg, signer)

    code, _, err = cofre("audit", "retire", "--public-key", str(pem))
    assert code == 1
    assert f"error [audit_retention_refused]: audit_entries_p{OLD[0]:%Y%m}: its leaves 0..11" in err

    code, out, err = cofre("audit", "archive")
    assert code == 0, err
    assert "archived leaves 0..7 as cofre-audit/segments/0-8.jsonl.gz" in out
    assert out.endswith("archived 2 segments\n")
    # PCI DSS 10.5.1: each object is locked for COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS.
    for key in ("cofre-audit/segments/0-8.jsonl.gz", "cofre-audit/manifests/8-15.json"):
        head = s3._client.head_object(Bucket=BUCKET, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        # Upload time + 12 calendar months; the hour's slack only absorbs a slow run.
        expected = add_months(head["LastModified"], 12)
        assert abs(head["ObjectLockRetainUntilDate"] - expected) < timedelta(hours=1)

    saved = tmp_path / "last-head.json"
    code, out, err = cofre(
        "audit", "verify-archive", "--public-key", str(pem), "--online", "--save-head", str(saved)
    )
    assert code == 0, err
    assert out == (
        "OK: 2 segments, 15 entries verified, last archived head size 15; the online log "
        "continues from it\n"
    )
    assert json.loads(saved.read_text())["tree_size"] == 15

    code, out, err = cofre("audit", "retire", "--public-key", str(pem))
    assert code == 0, err
    assert f"dropped audit_entries_p{OLD[0]:%Y%m}: 12 entries (leaves 0..11), online log " in out
    code, out, err = cofre("audit", "partitions")
    assert code == 0, err
    assert f"audit_entries_p{OLD[0]:%Y%m}  retired  12 entries, online from leaf 15" in out

    # Incremental: only what follows the saved head is fetched and checked.
    sequence(pg, signer)
    assert cofre("audit", "archive")[0] == 0
    code, out, err = cofre(
        "audit", "verify-archive", "--public-key", str(pem), "--from-head", str(saved)
    )
    assert code == 0, err
    # After leaf 15: the two segments' `audit.archive` entries, the `audit_read` of
    # `verify-archive --online` (its read of the database's heads, finding F6), and one
    # `audit.partition.retire` per partition dropped (the empty ones too).
    with pg.connect() as connection:
        actions = [
            json.loads(p)["action"]
            for p in connection.execute(
                sa.text(
                    "SELECT e.payload FROM audit_entries e JOIN audit_leaves l "
                    "ON l.entry_id = e.id WHERE l.leaf_index >= 15 ORDER BY l.leaf_index"
                )
            ).scalars()
        ]
    assert actions == ["audit.archive"] * 2 + ["audit_read"] + ["audit.partition.retire"] * 3
    # Leaves 15..20: the five above and the `--online` read's own entry.
    assert out.startswith("OK: 1 segments, 6 entries verified, last archived head size 21")
    assert AuditStore(pg).verify(signer.public_key_pem()).online_from == 15
    code, out, err = cofre("audit", "verify", "--public-key", str(pem), "--unsafe-no-witness")
    assert code == 0, err
    assert out.startswith("OK: 21 entries, ")
    assert out.endswith(
        "; leaves 0..14 were retired to the archive (check them with "
        "`cofre audit verify-archive`)\n"
    )

    s3._client.delete_object(Bucket=BUCKET, Key=segment_key("cofre-audit/", 8, 15))
    code, out, err = cofre("audit", "verify-archive", "--public-key", str(pem))
    assert code == 1
    assert err == (
        "FAILED: archived segment 8-15 is missing: no object cofre-audit/segments/8-15.jsonl.gz\n"
    )


def test_archive_refuses_a_bucket_that_cannot_keep_the_retention(
    pg: Engine,
    signer: HSMTreeHeadSigner,
    s3: S3ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fail closed: without Object Lock, or with a lifecycle rule that expires the
    archive before COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS, nothing is shipped or recorded."""
    plain = "cofre-audit-no-lock"
    s3._client.create_bucket(Bucket=plain)
    _archive_settings(monkeypatch, tmp_path, pg, plain, TOTAL_RETENTION_MONTHS="13")
    append_at(pg, NOW, 3)
    sequence(pg, signer)
    runner = CliRunner()

    result = runner.invoke(app, ["audit", "archive"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error [archive_bucket_unfit]: bucket {plain} has no S3 Object Lock: it cannot keep "
        "the audit archive for COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS=13 months"
    )
    assert "Contents" not in s3._client.list_objects_v2(Bucket=plain)

    s3._client.put_bucket_lifecycle_configuration(
        Bucket=BUCKET,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "too-short",
                    "Status": "Enabled",
                    "Filter": {"Prefix": "cofre-audit/"},
                    "Expiration": {"Days": 366},
                }
            ]
        },
    )
    result = runner.invoke(app, ["audit", "archive", "--bucket", BUCKET])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error [archive_bucket_unfit]: bucket {BUCKET}: lifecycle rule too-short expires "
        "cofre-audit/ objects after 366 days, before COFRE_ARCHIVE__TOTAL_RETENTION_MONTHS=13"
    )
    assert "Contents" not in s3._client.list_objects_v2(Bucket=BUCKET)
    with pg.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM audit_archive")).scalar() == 0
