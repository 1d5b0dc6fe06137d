"""What a reveal's share lock may hold (session 31's review of the races of a token's
life): only a row it answers.

Session 31 had a detokenize read its token ``FOR SHARE`` on PostgreSQL, so that a
delete waits for the reveal's commit. The lock was taken by the read itself, before
the checks that make most guesses a miss: another domain's token, a deleted one, an
expired one. A miss is answered and its charge committed, so the lock lasted to the
end of the call's commit group, and a reveal that missed held rows it had no business
holding: a caller's misses on another domain's token kept that domain's update (or
delete) waiting, and misses on an expired token kept the purge's whole batch waiting
on that row (a statement bound of 5 s, then the batch fails; reveals of one row from
two nodes that overlap share the lock between them and keep a waiting writer behind
it, as PostgreSQL does not queue a share lock behind a waiting writer).

The interleaving is forced as in tests/vault/test_token_lifecycle_races.py: the
revealing identity's rate-limit bucket is held by another session, so the reveal waits
at its charge, after its read, and the other call comes while it waits.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.support.locks import answered_while_held, done_or_waiting
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_token_lifecycle_races import (
    ERASER,
    _answered_before_its_end,
    _HeldBucket,
    _node,
    _Nodes,
    _trail,
)
from tests.vault.test_token_update import NOW, SHOP2, VISA, _Calls, _row
from vault.errors import TokenExpired, TokenNotFound
from vault.service import TokenizeRequest, TokenRecord, TokenUpdate


def _while_a_reveal_misses(
    engine: Engine, nodes: _Nodes, token: str, write: object
) -> tuple[object, object, bool]:
    """GETNET's reveal of `token` on node one, held at its charge (after its read),
    while `write` runs on node two; what each answered, and whether `write` was
    answered while the reveal was held (PostgreSQL)."""
    assert callable(write)
    held = _HeldBucket(engine, GETNET.identity)
    return answered_while_held(held, lambda: nodes.one.detokenize(GETNET, token), write)


def test_finding_a_miss_on_another_domains_token_holds_no_lock_on_it(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A caller reveals another domain's token (it may not read that domain): the
    answer is a miss, but the row was share-locked until the caller's commit, and the
    owner's update of its own token waited for a stranger's call."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        ours = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
        nodes.one.detokenize(GETNET, ours.token)  # GETNET's bucket, to hold
        theirs = nodes.one.tokenize(SHOP2, TokenizeRequest(VISA, "card_random"))
        revealed, updated, first = _while_a_reveal_misses(
            engine,
            nodes,
            theirs.token,
            lambda: nodes.two.update(SHOP2, theirs.token, TokenUpdate(metadata={"v": "2"})),
        )
        assert isinstance(revealed, TokenNotFound), revealed
        assert isinstance(updated, TokenRecord), updated
        if engine.dialect.name == "postgresql":
            assert first, "the owner's update waited on another identity's miss"
    finally:
        nodes.close()


def test_finding_a_miss_on_an_expired_token_holds_no_lock_on_it(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A caller reveals a token whose life ended (answered `TokenExpired`): the row was
    share-locked until the caller's commit, and the purge's batch, which shreds it,
    waited for the caller."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        expiring = nodes.one.tokenize(
            PAYMENTS, TokenizeRequest(VISA, "card_random", ttl_seconds=60)
        )
        nodes.one.detokenize(GETNET, expiring.token)  # GETNET's bucket, to hold
        for clock in nodes.clocks:
            clock.now = NOW + timedelta(seconds=61)
        revealed, purged, first = _while_a_reveal_misses(
            engine, nodes, expiring.token, nodes.two.purge_expired
        )
        # SQLite: the calls one after the other, the purge's first a miss all the same.
        assert isinstance(revealed, TokenExpired | TokenNotFound), revealed
        assert purged == 1, purged
        assert _row(engine, expiring.token).ciphertext is None
        if engine.dialect.name == "postgresql":
            assert first, "the purge waited on a reveal that missed"
    finally:
        nodes.close()


def test_bound_overlapping_reveals_keep_a_waiting_delete_behind_them(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A bound, not a finding (docs/threat-model.md): PostgreSQL does not queue a share
    lock behind a writer that waits on the row. A reveal holds its token's row; a delete
    on another node waits for it; a reveal of the token on a third node is not queued
    behind the delete but shares the first one's lock, so the delete waits for both.
    Reveals that overlap without a gap keep the delete waiting up to its statement
    bound. What holds: the delete comes after every reveal it waited for, in the
    answers and in the audit log."""
    nodes = _Nodes(engine, hsm_provider)
    third = _node(engine, hsm_provider, nodes.clocks[0])
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
        nodes.one.detokenize(GETNET, first.token)  # GETNET's bucket, to hold
        held, calls = _HeldBucket(engine, GETNET.identity), _Calls()
        calls.start(lambda: nodes.one.detokenize(GETNET, first.token))
        held.waiters(1)
        calls.start(lambda: nodes.two.delete(ERASER, first.token))
        done_or_waiting(engine, calls, 1, 2)
        calls.start(lambda: third.detokenize(GETNET, first.token))
        done_or_waiting(engine, calls, 2, 3)
        held.release()
        revealed, deleted, again = calls.join()
        assert deleted is True, deleted
        trail = _trail(engine, first.token_id)
        _answered_before_its_end(trail)
        if engine.dialect.name == "postgresql":  # the second not queued behind the delete
            assert getattr(revealed, "pan", None) == VISA, revealed
            assert getattr(again, "pan", None) == VISA, again
            assert [a for a, _ in trail[-3:]] == ["detokenize", "detokenize", "delete"], trail
    finally:
        third.close()
        nodes.close()
