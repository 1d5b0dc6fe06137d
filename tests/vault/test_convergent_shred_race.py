"""A convergent tokenize that finds its card's token expired shreds it and makes a new
one (`TokenizeOperations._answer_convergent`). Its read of the token takes no lock, so
another node may make the token live again, or shred it, between that read and the
shred: the races review 29c fixed for the purge (note 29 left this one as a bound).

A test named ``test_finding_...`` FAILED before its fix (its docstring: what went
wrong, the fix). On PostgreSQL the interleaving is forced: the token's row is held by
another session while both calls come to it. A SQLite write transaction excludes every
other, so there the two calls run one after the other, in either order; each test then
checks what must hold whichever ran first.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_token_update import (
    NOW,
    VISA,
    Clock,
    _Calls,
    _entries,
    _Held,
    _row,
    _vault,
)
from vault.errors import TokenNotFound
from vault.service import TokenizeRequest, TokenRecord, TokenUpdate

CONVERGENT = "pan_bin6_last4"


def _purged(engine: Engine) -> list[str]:
    return _entries(engine, "purge")


def _token_ids(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(sa.text("SELECT id FROM tokens ORDER BY created_at")).scalars())


def test_finding_a_convergent_tokenize_never_shreds_a_token_an_update_made_live_longer(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """An update makes a convergent token permanent just before its life ends, while a
    tokenize of the same card on another node has read the token expired (its clock a
    little ahead) and waits to shred it: the update was answered ``expires_at: null``
    and audited so, then the tokenize's write (which named the row by id alone, and
    PostgreSQL re-checks only that after the wait) shredded the token all the same and
    audited a purge: the shop lost the card it had just been told is kept for ever.
    Fix: the tokenize shreds the row only while it is still live and expired, and
    answers the card's token as the update left it (the card's one convergent token in
    the domain, now live), with no purge entry."""
    updater, tokenizer = Clock(), Clock()
    one = _vault(engine, hsm_provider, updater)
    two = _vault(engine, hsm_provider, tokenizer)
    try:
        first = one.tokenize(
            PAYMENTS, TokenizeRequest(VISA, CONVERGENT, ttl_seconds=60, expiry="03/27")
        )
        token = first.token
        updater.now = NOW + timedelta(seconds=30)  # live when the update reads it
        tokenizer.now = NOW + timedelta(seconds=61)  # expired when the tokenize reads it
        held, calls = _Held(engine, token), _Calls()
        calls.start(lambda: one.update(PAYMENTS, token, TokenUpdate(sets_ttl=True)))
        held.waiters(1)
        calls.start(lambda: two.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT)))
        held.waiters(2)  # the tokenize read the row expired and waits to shred it
        held.release()
        updated, tokenized = calls.join()
        assert isinstance(tokenized, TokenRecord), tokenized
        if isinstance(updated, TokenRecord):  # PostgreSQL always: the update came first
            assert updated.expires_at is None
            row = _row(engine, token)
            assert (row.deleted_at, row.expires_at) == (None, None)
            assert row.ciphertext is not None
            assert one.detokenize(GETNET, token).expiry == "2027-03"
            assert (tokenized.token, tokenized.existing) == (token, True)
            assert tokenized.expires_at is None
            assert _purged(engine) == []
            assert _token_ids(engine) == [first.token_id]
        else:  # SQLite, the tokenize first: the token was expired, and is replaced
            assert isinstance(updated, TokenNotFound), updated
            assert tokenized.token != token
            assert _row(engine, token).ciphertext is None
            assert len(_purged(engine)) == 1
    finally:
        one.close()
        two.close()


def test_finding_a_convergent_tokenize_does_not_purge_again_a_token_a_purge_shredded(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The purge on one node and a tokenize of the same card on another both read its
    token expired; the purge shreds it first. The tokenize's write, by id alone, then
    wrote the shredded row again (its ``deleted_at`` moved to the tokenize's time) and
    audited a second purge of it: two purge entries for one token, the second for a
    row it did not shred. Fix: the tokenize shreds only a row still live and expired;
    it finds this one shredded, makes the card a new token and writes no purge entry."""
    purger, tokenizer = Clock(), Clock()
    one = _vault(engine, hsm_provider, purger)
    two = _vault(engine, hsm_provider, tokenizer)
    try:
        first = one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, ttl_seconds=60))
        token = first.token
        purger.now = tokenizer.now = NOW + timedelta(seconds=61)
        held, calls = _Held(engine, token), _Calls()
        calls.start(one.purge_expired)
        held.waiters(1)
        calls.start(lambda: two.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT)))
        held.waiters(2)
        held.release()
        purged, tokenized = calls.join()
        assert isinstance(tokenized, TokenRecord), tokenized
        assert (tokenized.existing, tokenized.token != token) == (False, True)
        assert purged in {0, 1}, purged  # 0: the tokenize (SQLite) shredded it first
        entries = _purged(engine)
        assert len(entries) == 1, entries
        assert first.token_id in entries[0]
        row = _row(engine, token)
        assert row.ciphertext is None
        assert row.fingerprint is None
        assert one.detokenize(GETNET, tokenized.token).pan == VISA
    finally:
        one.close()
        two.close()
