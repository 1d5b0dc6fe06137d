"""Two vault processes on one PostgreSQL, sharing one SoftHSM token directory (as vault
nodes share one CloudHSM cluster), under concurrent load: no duplicate tokens, one
convergent token per PAN across nodes, one consistent audit log."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.pans import card_number
from tests.support.postgres import PostgresCluster
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import make_vault
from vault.storage.database import create_database_engine


def _pan(i: int) -> str:
    return card_number("5", i)


@pytest.mark.slow
def test_two_nodes_one_database(
    tmp_path: Path,
    softhsm_token: SoftHSMToken,
    durable_postgres: PostgresCluster,
    reliability_report: list[str],
) -> None:
    url = durable_postgres.sqlalchemy_url()
    shared_tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, shared_tokens)
    nodes = [
        make_vault(tmp_path / f"node{n}", softhsm_token, url, token_dir=shared_tokens)
        for n in (1, 2)
    ]
    for node in nodes:
        node.start()
    pans = [_pan(i) for i in range(60)]
    results: list[tuple[str, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        node = nodes[index % 2]
        with node.client() as client:
            for round_ in range(5):
                for pan in pans[index % 3 :: 3]:
                    response = client.post(
                        "/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"}
                    )
                    if response.status_code != 200:
                        errors.append(response.text)
                        continue
                    with lock:
                        results.append((pan, response.json()["token"]))
                unique = _pan(10_000 + index * 100 + round_)
                response = client.post("/v1/tokenize", json={"pan": unique, "format": "uuid"})
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node in nodes:
        node.stop()
    assert errors == []
    by_pan: dict[str, set[str]] = {}
    for pan, token in results:
        by_pan.setdefault(pan, set()).add(token)
    assert len(by_pan) == 60
    assert all(len(tokens) == 1 for tokens in by_pan.values())
    engine = create_database_engine(url)
    try:
        with engine.connect() as c:
            duplicates = c.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT token FROM tokens GROUP BY token "
                    "HAVING count(*) > 1) d"
                )
            ).scalar_one()
            convergent = c.execute(
                sa.text("SELECT count(*) FROM tokens WHERE format = 'pan_bin6_last4'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert duplicates == 0
    assert convergent == 60
    sequenced = nodes[0].cofre("audit", "sequence")
    assert sequenced.returncode == 0, sequenced.stderr
    verified = nodes[1].cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stderr
    reliability_report.append(f"scale-out, two nodes: audit {verified.stdout.strip()}")
