"""Review 31b, an attack on the sequencer's clock-step fix (review 31 signs a head by
time when the last head's time is `sign_every_seconds` away in either direction).

Two nodes share the log and elect the sequencer per tick through the database's lock,
so leadership moves between them. With their clocks apart by `sign_every_seconds` or
more (10 s by default: a node whose NTP failed, a VM resumed), each found the other's
last head that far away, in the past or the future, and signed one on every tick it
led while entries came: a head (an HSM signature, a row, a checkpoint for the
witnesses) per tick of 0.2 s instead of one per `sign_every_seconds`. Fixed: each
sequencer measures the interval on its own clock, from when it first saw the last head,
so a skew between nodes signs no extra heads and a step of its own clock signs one.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from audit.log import AuditEvent, AuditLog, Outcome
from audit.schema import audit_heads
from audit.sequencer import Sequencer
from vault.signing import HSMTreeHeadSigner


def _queue(engine: Engine) -> None:
    with engine.begin() as connection:
        AuditLog().append_many(connection, [AuditEvent("test", Outcome.SUCCESS, "someone")])


def _heads(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return sorted(int(s) for s in connection.execute(select(audit_heads.c.tree_size)).scalars())


def test_two_nodes_with_skewed_clocks_sign_no_head_per_tick(
    engine: Engine, signer: HSMTreeHeadSigner
) -> None:
    ahead = [1_800_000_060.0]
    behind = [1_800_000_000.0]  # a minute behind, every other setting the same
    nodes = [
        Sequencer(engine, signer, sign_every_entries=1000, sign_every_seconds=10, clock=c)
        for c in (lambda: ahead[0], lambda: behind[0])
    ]
    for tick in range(12):  # leadership alternating, 2.4 s of both clocks
        _queue(engine)
        nodes[tick % 2].run_once()
        ahead[0] += 0.2
        behind[0] += 0.2
    assert _heads(engine) == [1], _heads(engine)  # the first; none due by time since
    ahead[0] += 10
    behind[0] += 10
    _queue(engine)
    nodes[0].run_once()
    nodes[1].run_once()
    assert _heads(engine) == [1, 13], _heads(engine)  # one per interval, not one each
