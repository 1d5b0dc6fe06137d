"""The backup and restore runbook of docs/operations.md, run: a base backup with WAL
archiving, a point-in-time restore of a throwaway PostgreSQL to a named restore point,
the vault comes back and serves what the backup holds, and `cofre audit verify --head`
against a head kept outside the database detects the entries the restore lost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg

from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault


def _as_postgres(cluster: PostgresCluster, *argv: str) -> None:
    done = cluster._run(*argv)  # the suite's own helper: runs argv as the postgres user
    assert done.returncode == 0, done.stdout + done.stderr


def _archived(cluster: PostgresCluster) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
    assert row is not None
    return int(row[0])


def _archive_wal(cluster: PostgresCluster, archive: Path) -> None:
    _as_postgres(cluster, "mkdir", "-m", "700", str(archive))
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET archive_mode = on")
        conn.execute(f"ALTER SYSTEM SET archive_command = 'cp %p {archive}/%f'")
    cluster.stop()
    cluster.start()


def _restore(cluster: PostgresCluster, backup: Path, archive: Path, target: str) -> None:
    """Point-in-time restore: the base backup, WAL from the archive, up to `target`."""
    shutil.rmtree(cluster.data_dir)
    _as_postgres(cluster, "cp", "-a", str(backup), str(cluster.data_dir))
    _as_postgres(cluster, "chmod", "700", str(cluster.data_dir))
    with (cluster.data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"restore_command = 'cp {archive}/%f %p'\n"
            f"recovery_target_name = '{target}'\n"
            "recovery_target_action = 'promote'\n"
        )
    _as_postgres(cluster, "touch", str(cluster.data_dir / "recovery.signal"))
    cluster.start()


def test_point_in_time_restore_then_rollback_is_detected(
    tmp_path: Path, softhsm_token: SoftHSMToken, durable_postgres: PostgresCluster
) -> None:
    cluster = durable_postgres
    archive = cluster.base / "wal-archive"
    backup = cluster.base / "base-backup"
    _archive_wal(cluster, archive)

    vault = make_vault(tmp_path / "node", softhsm_token, cluster.sqlalchemy_url())
    vault.start()
    with vault.client() as client:
        kept = client.post("/v1/tokenize", json={"pan": card_number("4", 31), "format": "uuid"})
        assert kept.status_code == 200
    assert vault.cofre("audit", "sequence").returncode == 0

    # The runbook's base backup, then a named restore point to recover to.
    _as_postgres(
        cluster,
        str(cluster.bindir / "pg_basebackup"),
        *("-D", str(backup), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"),
        *("-X", "none", "--checkpoint=fast"),
    )
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_restore_point('before-incident')")

    with vault.client() as client:
        lost = client.post("/v1/tokenize", json={"pan": card_number("4", 32), "format": "uuid"})
        assert lost.status_code == 200
    assert vault.cofre("audit", "sequence").returncode == 0
    head = vault.cofre("audit", "head")
    assert head.returncode == 0, head.stderr
    kept_head = tmp_path / "kept-head.json"  # outside the database, as the runbook says
    kept_head.write_text(head.stdout)
    before = _archived(cluster)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    for _ in range(3000):
        if _archived(cluster) > before:
            break
        time.sleep(0.01)
    vault.stop()
    cluster.stop()

    _restore(cluster, backup, archive, "before-incident")

    # Right after the restore, before anything writes: the signed entries are gone.
    removed = vault.cofre("audit", "verify", "--unsafe-no-witness", "--head", str(kept_head))
    assert removed.returncode == 1
    assert "were removed (a restore from an older backup, or tampering)" in removed.stderr

    vault.start()
    with vault.client("settlement") as client:
        back = client.post("/v1/detokenize", json={"token": kept.json()["token"]})
        assert back.status_code == 200, back.text
        assert back.json()["pan"] == card_number("4", 31)
    with vault.client() as client:
        gone = client.get(f"/v1/tokens/{lost.json()['token']}")
        assert gone.status_code == 404
    vault.stop()

    # The restored log is consistent in itself...
    alone = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert alone.returncode == 0, alone.stderr
    # ...only the head kept outside shows that signed entries were lost.
    checked = vault.cofre("audit", "verify", "--unsafe-no-witness", "--head", str(kept_head))
    assert checked.returncode == 1
    # The vault wrote new entries on its way back (its start, the policy in force), so
    # the log is longer again but no longer extends the kept head: a fork.
    assert checked.stderr.startswith("FAILED: the log's first ")
    assert "forked (a restore from an older backup followed by new entries" in checked.stderr
