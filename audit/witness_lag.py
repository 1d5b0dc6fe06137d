"""How far the witnesses' cosignatures trail the log: what on-call alerts on.

IN PCI SCOPE (read-only). For each witness, and for the quorum, the lag of the newest
checkpoint it cosigned behind the newest signed head, in entries and in seconds (how
long the oldest head it has not cosigned has waited; 0 when it is current). A head
without the quorum's cosignatures is not yet evidence a QSA accepts (every verifier
requires the quorum), so "quorum lag above N minutes" is the page: witnesses down,
refusing (a rollback or fork) or answering with invalid cosignatures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from audit.note import VerifierKey
from audit.publisher import newest_cosigned
from audit.schema import READ_ONLY
from audit.store import AuditStore


@dataclass(frozen=True)
class Lag:
    """How far a cosigned checkpoint trails the newest signed head."""

    entries: int
    seconds: float


@dataclass(frozen=True)
class WitnessLag:
    """Each witness's lag (by name) and the quorum's: the newest head that `quorum`
    witnesses have cosigned, behind the newest head."""

    head_size: int
    witnesses: dict[str, Lag]
    quorum: Lag


def _cosigned_sizes(engine: Engine, keys: Sequence[VerifierKey]) -> dict[str, int]:
    """The newest tree size each witness key cosigned (0 for none), one index probe each
    (`NEWEST_COSIGNED`): cheap on every scrape and readiness probe however long the log
    and however far a witness trails."""
    with engine.execution_options(**READ_ONLY).connect() as connection:
        return {key.name: newest_cosigned(connection, key.name, key.key_id) for key in keys}


def witness_lag(
    engine: Engine,
    keys: Sequence[VerifierKey],
    quorum: int,
    clock: Callable[[], float] = time.time,
) -> WitnessLag:
    """The lag of each pinned witness key and of the `quorum` (see the module docstring).
    With fewer witnesses than the quorum, the quorum is never reached: its lag is the
    whole log's."""
    store = AuditStore(engine)
    head = store.latest_head()
    size = 0 if head is None else head.tree_size
    cosigned = _cosigned_sizes(engine, keys)
    now = clock()
    waited: dict[int, float] = {}

    def lag(at: int) -> Lag:
        if at >= size:
            return Lag(0, 0.0)
        if at not in waited:
            [first] = store.heads_page(at, size, 1)
            waited[at] = max(0.0, now - first.timestamp_ms / 1000)
        return Lag(size - at, waited[at])

    ranked = sorted(cosigned.values(), reverse=True)
    reached = ranked[quorum - 1] if 0 < quorum <= len(ranked) else 0
    return WitnessLag(
        head_size=size,
        witnesses={name: lag(at) for name, at in cosigned.items()},
        quorum=lag(reached),
    )
