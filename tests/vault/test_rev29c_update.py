"""Review 29c: an attack review of token update (`VaultService.update`,
PATCH /v1/tokens/{token}) as the holder of a stolen certificate granted ``update``.

A test named ``test_finding_...`` FAILED on the reviewed branch (its docstring: what
went wrong, the fix). The others are regression tests of attacks that found nothing.

The races need two transactions in flight at once, which only PostgreSQL has (a SQLite
write transaction excludes every other, so the interleavings below cannot happen there).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.databases import migrated_engine
from tests.vault.conftest import ALICE, BOB, GETNET, OFFICERS, PAYMENTS, rotation_of
from tests.vault.test_token_update import (
    NOW,
    POLICY,
    VISA,
    Clock,
    _Calls,
    _card,
    _entries,
    _Held,
    _row,
    _vault,
)
from vault.ceremony import CeremonyState
from vault.errors import InvalidInput, TokenNotFound
from vault.pan import Pan
from vault.service import TokenizeRequest, TokenRecord, TokenUpdate, VaultService


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    with migrated_engine(pg_database) as engine:
        yield engine


def _purges(engine: Engine) -> list[str]:
    return _entries(engine, "purge")


def test_finding_the_purge_never_shreds_a_token_an_update_made_live_longer(
    pg_engine: Engine, hsm_provider: HSMProvider
) -> None:
    """An update that makes a token permanent just before its life ends, and a purge on
    another node that read the expired token just before the update committed: the
    update was answered ``expires_at: null`` (and audited so), then the purge's write,
    which waited on the update's row lock, shredded the token all the same (its UPDATE
    named the row by id alone, and PostgreSQL re-checks only that after the wait): the
    shop lost the card it had just been told is kept for ever. The same held for a
    convergent tokenize that extends a token (`_outlive`). Fix: the purge shreds a row
    only while it is still live and expired (its UPDATE carries both conditions, which
    PostgreSQL checks again on the row the update left), and writes no entry for a row
    it left."""
    updater, purger = Clock(), Clock()
    one, two = _vault(pg_engine, hsm_provider, updater), _vault(pg_engine, hsm_provider, purger)
    try:
        token = _card(one, ttl_seconds=60, expiry="03/27")
        updater.now = NOW + timedelta(seconds=30)  # live when the update reads it
        purger.now = NOW + timedelta(seconds=61)  # expired when the purge reads it
        held, calls = _Held(pg_engine, token), _Calls()
        calls.start(lambda: one.update(PAYMENTS, token, TokenUpdate(sets_ttl=True)))
        held.waiters(1)
        calls.start(two.purge_expired)
        held.waiters(2)  # the purge read the row and waits to shred it
        held.release()
        updated, purged = calls.join()
        assert isinstance(updated, TokenRecord), updated
        assert updated.expires_at is None
        assert purged == 0
        row = _row(pg_engine, token)
        assert (row.deleted_at, row.expires_at) == (None, None)
        assert row.ciphertext is not None
        assert one.detokenize(GETNET, token).expiry == "2027-03"
        assert _purges(pg_engine) == []
    finally:
        one.close()
        two.close()


def test_finding_an_update_that_waited_past_the_tokens_end_does_not_revive_it(
    pg_engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The update read the clock before it waited for the row's lock, and judged the
    token live by that time: a token whose life ended while the update waited (behind
    another node's write of the row) was given a new life, permanent here, though it was
    expired when the update got it (every reveal answered it expired a moment before).
    Fix: the row is judged, and its new life counted, from the time the update holds the
    row's lock."""
    clock = Clock()
    vault = _vault(pg_engine, hsm_provider, clock)
    try:
        token = _card(vault, ttl_seconds=60)
        held, calls = _Held(pg_engine, token), _Calls()
        calls.start(lambda: vault.update(PAYMENTS, token, TokenUpdate(sets_ttl=True)))
        held.waiters(1)
        clock.now = NOW + timedelta(seconds=61)  # the token's life ends meanwhile
        held.release()
        (answer,) = calls.join()
        assert isinstance(answer, TokenNotFound), answer
        assert _row(pg_engine, token).expires_at is not None
        with pg_engine.connect() as c:
            payloads = c.execute(sa.text("SELECT payload FROM audit_entries")).scalars().all()
        assert not any('"expires_at":"never"' in p for p in payloads)
    finally:
        vault.close()


def test_an_update_during_a_data_rotation_is_kept_and_leaves_no_card_under_the_old_key(
    engine: Engine, rotation_provider: HSMProvider
) -> None:
    """An update reseals under the active data key, which a running data rotation has
    made the new one. One token is updated before any batch (the update moves it, and
    no batch counts it), one while a batch has read it under the old key and waits to
    write it (PostgreSQL: the batch's write, guarded by the old version, then finds it
    moved and leaves it; on SQLite the two run one after the other). Every card ends
    under the new key with the details its last write gave it, the rotation completes,
    and its progress never counts past what it set out to move (a row the update moved
    is counted at most once, by the batch that read it)."""
    policy = PolicyEngine(parse_policy(POLICY + OFFICERS, kind="toml").policy)
    vault = VaultService(engine, rotation_provider, policy)
    vault.initialize()
    try:
        rotation = rotation_of(vault, engine, rotation_provider)
        raced, early, untouched = (
            _card(vault, pan=Pan(pan), expiry="03/27", cardholder_name="ZOE A")
            for pan in ("4111111111111111", "5555555555554444", "4000056655665556")
        )
        ceremony = rotation.propose(ALICE, "data")
        assert rotation.approve(BOB, ceremony.id).state == CeremonyState.RUNNING
        vault.update(PAYMENTS, early, TokenUpdate(expiry="05/31"))
        held, calls = _Held(engine, raced), _Calls()
        calls.start(lambda: vault.update(PAYMENTS, raced, TokenUpdate(expiry="03/30")))
        held.waiters(1)
        calls.start(rotation.run_pending)
        held.waiters(2)  # the batch read the row under the old key and waits to write it
        held.release()
        assert not any(isinstance(result, Exception) for result in calls.join())
        for _ in range(100):
            if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
                break
            rotation.run_pending()
        status = rotation.status(ALICE, ceremony.id)
        assert status.state == CeremonyState.COMPLETED
        assert status.progress_done <= status.progress_total == 3
        with engine.connect() as c:
            versions = set(c.execute(sa.text("SELECT key_version FROM tokens")).scalars())
        assert versions == {status.new_version}
        for token, expiry in ((raced, "2030-03"), (early, "2031-05"), (untouched, "2027-03")):
            revealed = vault.detokenize(GETNET, token)
            assert (revealed.expiry, revealed.cardholder_name) == (expiry, "ZOE A")
    finally:
        vault.close()


def test_finding_an_update_that_changes_nothing_is_refused_not_audited_as_done(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A body whose only part is a blank cardholder name (which changes nothing: a
    stored name is not removed) was answered 200 and audited ``token.update`` success
    with ``fields: ""``: an entry saying the token was updated when nothing was written.
    Fix: an update whose parts all change nothing is refused as an empty one is
    (`InvalidInput`, 422 ``invalid_request``), audited failed."""
    vault = _vault(engine, hsm_provider, Clock())
    try:
        token = _card(vault, cardholder_name="ZOE A")
        for blank in ("", "   ", "\u3000"):
            with pytest.raises(InvalidInput):
                vault.update(PAYMENTS, token, TokenUpdate(cardholder_name=blank))
        assert not any('"outcome":"success"' in e for e in _entries(engine))
        assert vault.detokenize(GETNET, token).cardholder_name == "ZOE A"
    finally:
        vault.close()


def test_a_later_keyed_retry_leaves_what_an_update_set(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """Review 29c left this as a bound; session 30 closed it: a retry with a call's
    idempotency key is a replay, so a late retry of a request first sent before an
    update no longer puts the old expiry back. It is answered the token as it stands
    (the update's metadata and life), and changes none of it."""
    vault = _vault(engine, hsm_provider, Clock())
    try:
        request = TokenizeRequest(
            pan=VISA, format="card_random", idempotency_key="order-1", expiry="03/27"
        )
        token = vault.tokenize(PAYMENTS, request).token
        vault.update(PAYMENTS, token, TokenUpdate(expiry="03/30", metadata={"o": "2"}))
        again = vault.tokenize(PAYMENTS, request)
        assert (again.token, again.metadata) == (token, {"o": "2"})
        assert vault.detokenize(GETNET, token).expiry == "2030-03"
    finally:
        vault.close()
