"""Audit log figures: appends/s and proof generation time as the log grows.

- appends/s: entries written in their own transactions (as operations write them), then
  integrated by the sequencer; reported separately and combined.
- proof time: inclusion and consistency proofs from the stored tree at 10^4 and 10^6
  entries. Proofs read O(log n) stored subtree hashes, so the time should stay nearly
  flat (log n), not grow with n. A baseline in the same run: the same proof computed
  from the leaf hashes in memory (O(n)), which does grow with n.

Runs on SQLite in a temp dir (the embedded default). Signing uses an in-memory P-256 key:
this measures the log, not the HSM (bench/hsm_ops.py measures that).
Run: .venv/bin/python -m bench.audit [--sizes 10000,1000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, insert

from audit.log import AuditEvent, AuditLog, Outcome, canonical_payload
from audit.merkle import inclusion_proof, leaf_hash
from audit.schema import audit_entries, audit_queue
from audit.sequencer import Sequencer
from audit.store import AuditStore
from vault.storage.database import create_database_engine, migrate


class SoftwareSigner:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def key_id(self) -> str:
        return "bench"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        action="tokenize",
        outcome=Outcome.SUCCESS,
        actor="spiffe://cofre/bench",
        request_id=f"r{i}",
        token_id=f"t{i}",
    )


def _bulk_fill(engine: Engine, start: int, count: int) -> None:
    now = datetime.now(UTC)
    chunk = 20_000
    for offset in range(0, count, chunk):
        rows = [
            {"payload": canonical_payload(_event(start + offset + i), now), "created_at": now}
            for i in range(min(chunk, count - offset))
        ]
        with engine.begin() as connection:
            ids = (
                connection.execute(insert(audit_entries).returning(audit_entries.c.id), rows)
                .scalars()
                .all()
            )
            # Each with its entry's time, as the vault queues them (migration 0017).
            connection.execute(
                insert(audit_queue), [{"entry_id": i, "created_at": now} for i in ids]
            )


def _time_proofs(store: AuditStore, size: int, samples: int = 50) -> tuple[float, float]:
    step = max(1, size // samples)
    incl, cons = [], []
    for index in range(0, size, step):
        t0 = time.perf_counter()
        store.inclusion_proof(index, size)
        incl.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.consistency_proof(max(1, index), size)
        cons.append(time.perf_counter() - t0)
    return statistics.median(incl) * 1000, statistics.median(cons) * 1000


def main(sizes: list[int]) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_database_engine(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        migrate(engine)
        log = AuditLog()
        sequencer = Sequencer(
            engine, SoftwareSigner(), sign_every_entries=100_000, sign_every_seconds=3600
        )
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            with engine.begin() as connection:
                log.append(connection, _event(i))
        append_rate = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        sequencer.drain()
        sequence_rate = n / (time.perf_counter() - t0)
        results["append_per_s_own_transaction"] = append_rate
        results["sequence_per_s"] = sequence_rate
        print(f"appends, one transaction each (SQLite, synchronous=FULL): {append_rate:,.0f}/s")
        print(f"sequencer integration: {sequence_rate:,.0f} entries/s")

        store = AuditStore(engine)
        filled = n
        print(
            f"{'entries':>10} {'inclusion ms':>13} {'consistency ms':>15} {'in-memory O(n) ms':>18}"
        )
        for size in sizes:
            if size > filled:
                _bulk_fill(engine, filled, size - filled)
                sequencer.drain()
                filled = size
            inc_ms, cons_ms = _time_proofs(store, size)
            leaves = [leaf_hash(p.encode()) for _, p in store.iter_entries(0, size)]
            t0 = time.perf_counter()
            inclusion_proof(leaves, size // 2)
            naive_ms = (time.perf_counter() - t0) * 1000
            results[f"proof_ms_{size}"] = {
                "inclusion": inc_ms,
                "consistency": cons_ms,
                "in_memory_baseline": naive_ms,
            }
            print(f"{size:>10,} {inc_ms:>13.2f} {cons_ms:>15.2f} {naive_ms:>18.1f}")
        if len(sizes) >= 2:
            small, large = results[f"proof_ms_{sizes[0]}"], results[f"proof_ms_{sizes[-1]}"]
            ratio = large["inclusion"] / small["inclusion"]  # type: ignore[index]
            results["proof_growth_ratio"] = ratio
            print(
                f"inclusion proof time {sizes[-1]:,} vs {sizes[0]:,}: {ratio:.2f}x "
                f"(n grew {sizes[-1] / sizes[0]:.0f}x; log n grew "
                f"{(sizes[-1].bit_length()) / sizes[0].bit_length():.2f}x)"
            )
        engine.dispose()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = main([int(s) for s in args.sizes.split(",")])
    if args.json:
        print(json.dumps(out))
