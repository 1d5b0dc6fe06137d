"""SIGKILL the vault at random moments under tokenize load, five times per database.
After each restart every token a client received must detokenize to its PAN, every
token must have its audit entry and every tokenize entry its token, and the audit log
must verify. Counts are printed: acknowledged, verified after restart, lost (0)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.storage.database import create_database_engine

KILLS = 5


def _pan(worker: int, i: int) -> str:
    return card_number(f"4{worker:02d}", i)


def _load(  # noqa: PLR0917 - a thread target's arguments
    vault: VaultProcess,
    worker: int,
    offset: int,
    stop: threading.Event,
    acked: list[tuple[str, str]],
    lock: threading.Lock,
) -> None:
    i = offset
    while not stop.is_set():
        pan = _pan(worker, i)
        i += 1
        try:
            with vault.client(timeout=5) as client:
                while not stop.is_set():
                    response = client.post(
                        "/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"}
                    )
                    if response.status_code == 200:
                        with lock:
                            acked.append((pan, response.json()["token"]))
                    pan = _pan(worker, i)
                    i += 1
        except httpx.HTTPError:
            time.sleep(0.05)  # the vault is down: wait for it


def _crash_cycle(vault: VaultProcess, database_url: str, report: list[str]) -> None:
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    vault.start()
    for cycle in range(KILLS):
        stop = threading.Event()
        workers = [
            threading.Thread(target=_load, args=(vault, w, cycle * 1_000_000, stop, acked, lock))
            for w in range(4)
        ]
        for t in workers:
            t.start()
        time.sleep(0.4 + secrets.randbelow(1200) / 1000)  # a random moment under load
        vault.kill()
        stop.set()
        for t in workers:
            t.join()
        vault.start()
    verified = 0
    with vault.client("settlement") as client:
        for pan, token in acked:
            response = client.post("/v1/detokenize", json={"token": token})
            if response.status_code == 200 and response.json()["pan"] == pan:
                verified += 1
    vault.stop()
    lost = len(acked) - verified
    report.append(
        f"crash test on {database_url.split(':', maxsplit=1)[0]}: {KILLS} kills, "
        f"{len(acked)} tokens acknowledged, {verified} verified after restart, {lost} lost"
    )
    assert len(acked) > 0
    assert lost == 0
    engine = create_database_engine(database_url)
    try:
        with engine.connect() as connection:
            orphans = connection.execute(
                sa.text(
                    "SELECT count(*) FROM tokens t WHERE NOT EXISTS (SELECT 1 FROM audit_entries a "
                    "WHERE a.payload LIKE '%' || t.id || '%')"
                )
            ).scalar_one()
            dangling = [
                tid
                for tid in connection.execute(
                    sa.text(
                        "SELECT payload FROM audit_entries "
                        'WHERE payload LIKE \'%"action":"tokenize"%\''
                    )
                ).scalars()
                if '"token_id":null' in tid
            ]
            token_ids = set(connection.execute(sa.text("SELECT id FROM tokens")).scalars())
            entry_ids = {
                p.split('"token_id":"')[1].split('"')[0]
                for p in connection.execute(
                    sa.text(
                        "SELECT payload FROM audit_entries WHERE payload LIKE "
                        '\'%"action":"tokenize"%\' AND payload LIKE \'%"token_id":"%\''
                    )
                ).scalars()
            }
    finally:
        engine.dispose()
    assert orphans == 0, "tokens without their audit entry"
    assert dangling == []
    assert entry_ids <= token_ids, "audit entries pointing to missing tokens"
    sequenced = vault.cofre("audit", "sequence")
    assert sequenced.returncode == 0, sequenced.stderr
    verified_log = vault.cofre("audit", "verify", "--unsafe-no-witness")
    assert verified_log.returncode == 0, verified_log.stderr
    assert verified_log.stdout.startswith("OK:")


@pytest.mark.slow
def test_crash_sqlite(
    tmp_path: Path, softhsm_token: SoftHSMToken, reliability_report: list[str]
) -> None:
    vault = make_vault(tmp_path / "sqlite", softhsm_token, None)
    _crash_cycle(vault, f"sqlite:///{tmp_path / 'sqlite' / 'cofre.sqlite3'}", reliability_report)


@pytest.mark.slow
def test_crash_postgresql(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    durable_postgres: PostgresCluster,
    reliability_report: list[str],
) -> None:
    url = durable_postgres.sqlalchemy_url()
    vault = make_vault(tmp_path / "pg", softhsm_token, url)
    _crash_cycle(vault, url, reliability_report)
