"""Review 30: the head a bundle covers its period with carries the witness quorum.

Auditors now require more than half of the witnesses they pin (a minority quorum lets a
witness kept behind cosign a rewrite). The export took the first head covering the
period that had any cosignature: when one witness was down while that head was
published, it never cosigned it (witnesses cosign the newest head, not old ones), so
every export of that period covered it with one cosignature and failed an auditor's
2 of 2 or 2 of 3 forever, though later heads carried them all. It now takes the first
head with `COFRE_AUDIT__WITNESS_QUORUM` distinct witnesses' cosignatures, then the
first with any, then the first.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert

from audit.schema import audit_cosignatures
from audit.store import AuditStore
from compliance._covering import covering_head
from hsm.provider import HSMProvider
from tests.audit.test_witnessing import _append, _sequence
from vault.signing import HSMTreeHeadSigner


def _cosigned(engine: Engine, size: int, *witnesses: str) -> None:
    with engine.begin() as connection:
        for number, name in enumerate(witnesses):
            connection.execute(
                insert(audit_cosignatures).values(
                    tree_size=size,
                    witness=name,
                    key_id=number,
                    timestamp=1_772_000_000,
                    signature=b"\x00" * 64,
                )
            )


def test_the_first_head_with_the_quorum_covers_the_period(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    signer = HSMTreeHeadSigner(hsm_provider, "cofre-audit-v1")
    for _ in range(3):  # heads of 4, 8 and 12 entries
        _append(engine, 4)
        _sequence(engine, signer)
    _cosigned(engine, 4, "witness.example/w1")
    _cosigned(engine, 8, "witness.example/w1")  # w2 was down while 4 and 8 were published
    _cosigned(engine, 12, "witness.example/w1", "witness.example/w2")
    store = AuditStore(engine)

    def size(end: int, quorum: int) -> int | None:
        head = covering_head(engine, store, end, 10, quorum=quorum)
        return None if head is None else head.tree_size

    assert size(3, quorum=2) == 12  # before the fix: 4, which no auditor's 2 of 2 takes
    assert size(3, quorum=1) == 4
    assert size(9, quorum=3) == 12  # none has the quorum: the first with any
    assert size(13, quorum=1) is None
