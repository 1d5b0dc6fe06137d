"""Two first starts at once against one PostgreSQL (session 39, the on-call walk).

A new deployment rolls out two pods on an empty database: each runs its migration
(docs/operations.md: "concurrent runs wait for each other") and `cofre serve` at the same
moment, sharing one HSM token directory. Both must come up, answer at once from both
nodes, adopt the token's keys into the registry once (one `key.register` entry per
label), and leave a log `cofre audit verify` accepts.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.schema import audit_entries
from tests.support.pans import card_number
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault
from vault.key_registry import ADOPTION_END, REGISTER_RECORDS


@pytest.mark.slow
def test_two_first_starts_at_once_on_one_postgresql(
    tmp_path: Path, softhsm_token: SoftHSMToken, pg_database: str
) -> None:
    shared_tokens = tmp_path / "tokens"
    shutil.copytree(softhsm_token.token_dir, shared_tokens)
    nodes = [
        make_vault(tmp_path / f"node{n}", softhsm_token, pg_database, token_dir=shared_tokens)
        for n in (1, 2)
    ]
    failures: list[BaseException] = []

    def start(node: VaultProcess) -> None:
        try:
            node.start(timeout=180)
        except BaseException as exc:  # noqa: BLE001 - reported below, by the test's thread
            failures.append(exc)

    starting = [threading.Thread(target=start, args=(node,)) for node in nodes]
    try:
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        assert failures == []
        answers: list[tuple[int, str]] = []

        def tokenize(index: int) -> None:
            with nodes[index % 2].client() as client:
                for i in range(5):
                    pan = card_number("5", 1000 * index + i)
                    response = client.post(
                        "/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"}
                    )
                    answers.append((response.status_code, response.text))

        calls = [threading.Thread(target=tokenize, args=(i,)) for i in range(6)]
        for thread in calls:
            thread.start()
        for thread in calls:
            thread.join()
        assert [text for status, text in answers if status != 200] == []
    finally:
        for node in nodes:
            node.stop()
    engine = sa.create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            payloads = connection.execute(
                sa.select(audit_entries.c.payload).where(sa.text(REGISTER_RECORDS))
            ).scalars()
            details = [json.loads(p)["details"] for p in payloads]
    finally:
        engine.dispose()
    # Each adoption ends with a record naming no key (session 40): one, as each label.
    ends = [d for d in details if "label" not in d]
    assert ends == [{"how": ADOPTION_END}], ends
    labels = [d["label"] for d in details if "label" in d]
    assert sorted(labels) == sorted(set(labels)), "a token key adopted twice"
    verified = nodes[0].cofre("audit", "verify", "--unsafe-no-witness")
    assert verified.returncode == 0, verified.stdout + verified.stderr
