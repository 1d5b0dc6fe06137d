"""Review 26: the sequencer's partition-pruned queue read (4411c70), attacked.

The queue row's `created_at` must equal its entry's, or the LATERAL's first arm finds
nothing and the second (NULL only) is off: the entry is passed over "as an inner join
does", for ever, while every later entry is integrated around it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text

from audit.errors import AuditVerificationFailed
from audit.log import AuditEvent, AuditLog, Outcome
from audit.schema import audit_entries, audit_leaves, audit_queue
from audit.sequencer import Sequencer
from audit.store import AuditStore
from vault.signing import HSMTreeHeadSigner


def _append(engine: Engine, count: int) -> list[int]:
    with engine.begin() as connection:
        return [
            AuditLog().append(
                connection,
                AuditEvent(
                    action="tokenize", outcome=Outcome.SUCCESS, actor="svc", token_id=f"t{i}"
                ),
            )
            for i in range(count)
        ]


def _unsequenced(engine: Engine) -> list[int]:
    """Entries with no leaf: written (their operation answered) and not in the tree."""
    with engine.connect() as connection:
        leaves = select(audit_leaves.c.entry_id)
        return list(
            connection.execute(
                select(audit_entries.c.id).where(audit_entries.c.id.not_in(leaves))
            ).scalars()
        )


def test_a_queue_row_whose_time_is_not_its_entrys_is_not_passed_over_silently(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    """A queue row re-written with another time (the vault's role may DELETE and INSERT
    queue rows; a writer bug would do the same). On PostgreSQL the sequencer integrates
    the entries after it and never this one, with no error; `cofre audit verify` passes,
    saying only "1 entries queued". The sequencer should fall back to the id (or stop
    and say so) when a dated row finds no entry. (SQLite reads the queue by id alone:
    there the same row must be sequenced too, and CI runs no skipped test.)"""
    first, middle, last = _append(engine, 3)
    with engine.begin() as connection:
        at = connection.execute(
            select(audit_queue.c.created_at).where(audit_queue.c.entry_id == middle)
        ).scalar_one()
        connection.execute(text("DELETE FROM audit_queue WHERE entry_id = :i"), {"i": middle})
        connection.execute(
            text("INSERT INTO audit_queue (entry_id, created_at) VALUES (:i, :at)"),
            {"i": middle, "at": at + timedelta(microseconds=1)},
        )
    sequencer = Sequencer(engine, signer)
    try:
        sequencer.drain()
    except Exception:  # noqa: BLE001 - stopping and saying so is an acceptable answer
        return
    assert _unsequenced(engine) == [], (
        f"entry {middle} passed over for ever; entries {first} and {last} integrated"
    )


def test_an_entry_neither_sequenced_nor_queued_fails_verify(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    """Pre-existing, not from this change, but the brief's question: the vault's role
    holds DELETE on audit_queue (migration 0001), so anyone with its credentials can
    drop an entry's queue row after the operation committed. The entry stays in
    audit_entries, is never integrated, and `cofre audit verify` passes with nothing
    queued; only `cofre audit retire`, months later, notices the count."""
    _, middle, _ = _append(engine, 3)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_queue WHERE entry_id = :i"), {"i": middle})
    Sequencer(engine, signer).drain()
    assert _unsequenced(engine) == [middle]
    with pytest.raises(AuditVerificationFailed):
        AuditStore(engine).verify(None)
