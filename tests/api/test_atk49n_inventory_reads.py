"""Attack review atk49n: one stolen security officer's certificate against the key
inventory (`GET /v1/admin/keys`), a read that needs no second factor.

An officer's every request spends a unit of its bucket (300, then 5 a second, per
worker: docs/api.md), which bounds the audit entries its reads write. What each read
cost the vault was bounded by nothing: every inventory read counted every token the
vault holds, twice (`SELECT key_version, count(*) FROM tokens GROUP BY ...` and the
same by `fp_version`, which no index covers: a scan of the whole table on
PostgreSQL), and listed every object on the HSM token five times (once per key kind
for the cryptoperiods, once for the answer, once more for which keys are registered),
reading each object's attributes. A burst of 300 reads from one certificate was 600
scans of the token table and 1,500 listings of the token, on the database connections,
HSM sessions and threads every other identity's calls use; on a vault of ten million
tokens each scan costs the database seconds.

Counted, never timed: the statements that count the token table and the HSM listings
the reads made, over real mutual TLS with SoftHSM2 and SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.pans import card_number

READS = 10
TOKENS = 1000


@contextmanager
def _counting(vault: VaultServer, provider: HSMProvider) -> Iterator[dict[str, int]]:
    """Token-table counts the vault's statements made and HSM listings, while open."""
    seen = {"token_counts": 0, "listings": 0}
    lock = threading.Lock()

    def on_statement(*args: Any) -> None:
        statement = str(args[2]).lower()
        if "count(" in statement and "from tokens" in statement:
            with lock:
                seen["token_counts"] += 1

    listing = type(provider)._listing

    def counted(self: HSMProvider, session: Any) -> Any:
        with lock:
            seen["listings"] += 1
        return listing(self, session)

    event.listen(vault.runtime.engine, "before_cursor_execute", on_statement)
    type(provider)._listing = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        type(provider)._listing = listing  # type: ignore[method-assign]
        event.remove(vault.runtime.engine, "before_cursor_execute", on_statement)


@pytest.mark.slow
def test_an_officers_inventory_reads_do_not_each_scan_the_tokens_and_list_the_token(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    with running_vault(tmp_path, hsm_provider) as vault:
        with vault.client("payments") as shop:
            items = [{"pan": card_number("411111", i + 1), "format": "uuid"} for i in range(TOKENS)]
            assert shop.post("/v1/tokenize/batch", json={"items": items}).status_code == 200

        # The attacker: the officer's certificate alone (reads need no second factor).
        with (
            vault.client("officer-alice", signed=False) as officer,
            _counting(vault, hsm_provider) as seen,
        ):
            answers = [officer.get("/v1/admin/keys") for _ in range(READS)]
        assert [a.status_code for a in answers] == [200] * READS
        records = {
            k["version"]: k["records"]
            for k in answers[-1].json()["data_keys"]
            if k["records"] is not None
        }
        assert sum(records.values()) == TOKENS

        # Before: 2 statements counting every token per read (20), and 5 listings of
        # the HSM token per read (50).
        assert seen["token_counts"] <= 2, seen
        assert seen["listings"] <= 2 * READS, seen


@pytest.mark.slow
def test_an_officers_inventory_reads_sent_at_once_share_one_count(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    with running_vault(tmp_path, hsm_provider) as vault:
        with vault.client("payments") as shop:
            items = [{"pan": card_number("411111", i + 1), "format": "uuid"} for i in range(100)]
            assert shop.post("/v1/tokenize/batch", json={"items": items}).status_code == 200
        answers: list[int] = []

        def read() -> None:
            with vault.client("officer-alice", signed=False) as officer:
                answers.append(officer.get("/v1/admin/keys").status_code)

        with _counting(vault, hsm_provider) as seen:
            threads = [threading.Thread(target=read) for _ in range(READS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert answers == [200] * READS
        # Before: each read counted the tokens itself (20).
        assert seen["token_counts"] <= 2, seen
