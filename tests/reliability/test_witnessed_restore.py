"""The restore scenario of issue 23 with a witness: a real point-in-time restore of
PostgreSQL (the runbook of docs/operations.md), the vault configured with a `cofre
witness serve` process. The restored log is consistent in itself, and the operator's
key alone says OK; with the witness's key pinned, `cofre audit verify` fails before
anything is written (the witness has cosigned entries the log lost) and after (the
witness refuses the restored log's new head: a rollback)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from tests.reliability.test_backup_restore import _archive_wal, _archived, _as_postgres, _restore
from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from tests.support.witness_process import WitnessProcess


def _witnessed(vault: VaultProcess, vkey: Path) -> None:
    """Wait until the vault's newest head is cosigned (polling; no verdict on time)."""
    for _ in range(600):
        if vault.cofre("audit", "verify", "--witness-key", str(vkey)).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(vault.cofre("audit", "verify", "--witness-key", str(vkey)).stderr)


def _base_backup(cluster: PostgresCluster, backup: Path) -> None:
    """The runbook's base backup, then a named restore point to recover to."""
    _as_postgres(
        cluster,
        str(cluster.bindir / "pg_basebackup"),
        *("-D", str(backup), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"),
        *("-X", "none", "--checkpoint=fast"),
    )
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_restore_point('before-incident')")


def _archive_now(cluster: PostgresCluster) -> None:
    before = _archived(cluster)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    for _ in range(3000):
        if _archived(cluster) > before:
            break
        time.sleep(0.01)


def test_a_restored_log_fails_verification_and_the_witness_refuses_it(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    cluster = durable_postgres
    archive = cluster.base / "wal-archive"
    backup = cluster.base / "base-backup"
    _archive_wal(cluster, archive)

    vault = make_vault(tmp_path / "node", softhsm_token, cluster.sqlalchemy_url())
    log_vkey = vault.cofre("audit", "vkey", "--before-first-start")  # no start yet
    assert log_vkey.returncode == 0, log_vkey.stderr
    witness = WitnessProcess(tmp_path / "witness", [log_vkey.stdout.strip()])
    witness.start()
    vkey = tmp_path / "witness.vkey"
    vkey.write_text(witness.vkey + "\n")
    vault.env["COFRE_AUDIT__WITNESSES"] = json.dumps([{"url": witness.url, "vkey": witness.vkey}])
    vault.env["COFRE_AUDIT__PUBLISH_INTERVAL_SECONDS"] = "0.2"
    try:
        vault.start()
        with vault.client() as client:
            kept = client.post("/v1/tokenize", json={"pan": card_number("4", 41), "format": "uuid"})
            assert kept.status_code == 200
        _witnessed(vault, vkey)

        _base_backup(cluster, backup)
        with vault.client() as client:
            lost = client.post("/v1/tokenize", json={"pan": card_number("4", 42), "format": "uuid"})
            assert lost.status_code == 200
        _witnessed(vault, vkey)  # the witness has seen the entries the restore will lose
        _archive_now(cluster)
        vault.stop()
        cluster.stop()

        _restore(cluster, backup, archive, "before-incident")

        # The operator's key alone: the restored log is consistent in itself.
        assert vault.cofre("audit", "verify", "--unsafe-no-witness").returncode == 0
        # The witness remembers more than the log holds: lost entries, named.
        lost_entries = vault.cofre("audit", "verify", "--witness-key", str(vkey))
        assert lost_entries.returncode == 1
        assert "were lost (a restore from an older backup" in lost_entries.stderr

        # The vault comes back and writes (its start): the witness refuses its new head.
        vault.start()
        with vault.client() as client:
            assert client.get("/v1/tokens/" + lost.json()["token"]).status_code == 404
        refused = None
        for _ in range(600):
            refused = vault.cofre("audit", "verify", "--witness-key", str(vkey))
            if "rewritten or forked" in refused.stderr or "not witnessed" in refused.stderr:
                break
            time.sleep(0.1)
        assert refused is not None
        assert refused.returncode == 1
        vault.stop()
        metrics = witness.get("/metrics").text
        refusals = ("witness_conflict", "witness_old_size_invalid", "witness_inconsistent")
        assert any(f'outcome="{r}"' in metrics for r in refusals), metrics
    finally:
        vault.stop()
        witness.stop()
