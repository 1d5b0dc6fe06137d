"""Races of a token's life across vault nodes (session 31): a call that reads a token
without a lock, then answers or writes it, while another node deletes, purges or
updates it in between.

A test named ``test_finding_...`` FAILED before its fix (its docstring: what went
wrong, the fix). On PostgreSQL the interleaving is forced, with no sleep: another
session holds either the token's row (a write waits there) or the rate-limit bucket of
the reading call's identity (its charge waits there, just before its commit, after
every read); the other call comes while it waits. A SQLite write transaction excludes
every other, so there the calls run one after the other, in either order; each test
then checks what must hold whichever ran first: a call that answers a token orders
itself before that token's delete, in the answers and in the audit log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.locks import HeldRow, answered_while_held
from tests.vault.conftest import ALICE, BOB, GETNET, PAYMENTS
from tests.vault.test_token_update import (
    NOW,
    POLICY,
    VISA,
    Clock,
    _Calls,
    _Held,
    _row,
)
from vault.ceremony import CeremonyState
from vault.errors import TokenDeleted, TokenNotFound
from vault.rotation import KeyRotation
from vault.service import CallContext, TokenizeRequest, TokenRecord, TokenUpdate, VaultService

CONVERGENT = "pan_bin6_last4"
ERASER = CallContext("spiffe://cofre/eraser", "req-eraser")

# Payments and the reveal identity are charged (a bucket to hold); the eraser deletes
# in payments' domain and is not, so its delete never waits on that bucket.
RACE_POLICY = (
    POLICY.replace(
        "oracle_guard = { max_pans_per_bucket = 100000 }",
        "oracle_guard = { max_pans_per_bucket = 100000 }\n"
        "rate_limit = { per_second = 1000, burst = 1000 }",
        1,
    ).replace(
        'reveal = "full"\nread_domains',
        'reveal = "full"\nrate_limit = { per_second = 1000, burst = 1000 }\nread_domains',
        1,
    )
    + """
[identities."spiffe://cofre/eraser"]
operations = ["delete"]
domain = "spiffe://cofre/payments"
"""
)


def _node(engine: Engine, provider: HSMProvider, clock: Callable[[], datetime]) -> VaultService:
    policy = PolicyEngine(parse_policy(RACE_POLICY, kind="toml").policy)
    service = VaultService(engine, provider, policy, clock=clock)
    service.initialize()
    return service


class _Nodes:
    """Two vault nodes on one database, each with its own clock and group committer."""

    def __init__(self, engine: Engine, provider: HSMProvider) -> None:
        self.clocks = (Clock(), Clock())
        self.one = _node(engine, provider, self.clocks[0])
        self.two = _node(engine, provider, self.clocks[1])

    def close(self) -> None:
        self.one.close()
        self.two.close()


class _HeldBucket(HeldRow):
    """The rate-limit bucket of `identity` locked by another session (PostgreSQL) until
    `release`: a call of that identity waits at its charge, which a commit group makes
    just before its commit, after every read of the call."""

    def __init__(self, engine: Engine, identity: str) -> None:
        super().__init__(
            engine, "SELECT tat FROM rate_state WHERE identity = :i FOR UPDATE", {"i": identity}
        )


def _trail(engine: Engine, token_id: str) -> list[tuple[str, str]]:
    """The successful audit entries of `token_id` in log order: (action, its result or
    reason)."""
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        entries = [json.loads(p) for p in payloads]
    trail = []
    for entry in entries:
        if entry.get("token_id") == token_id and entry.get("outcome") == "success":
            details = entry.get("details") or {}
            trail.append((entry["action"], str(details.get("result", details.get("reason")))))
    return trail


def _answered_before_its_end(trail: list[tuple[str, str]]) -> None:
    """No entry answers the token (a tokenize, a reveal) after the entry that shredded it."""
    ends = [i for i, (action, _) in enumerate(trail) if action in {"delete", "purge"}]
    assert ends, trail
    later = [e for e in trail[ends[0] + 1 :] if e[0] not in {"delete", "purge"}]
    assert later == [], trail


def _tokenize_hit_and_delete(
    engine: Engine, nodes: _Nodes, token: str, tokenize: Callable[[], object]
) -> tuple[object, object, bool]:
    """`tokenize` on node one held at its charge (after its reads) while the eraser
    deletes `token` on node two; what each answered, and whether the delete was
    answered first (PostgreSQL: it did not wait for the tokenize)."""
    # `tokenize` reads the token, then waits to charge.
    held = _HeldBucket(engine, PAYMENTS.identity)
    return answered_while_held(held, tokenize, lambda: nodes.two.delete(ERASER, token))


def test_finding_a_convergent_hit_is_never_answered_after_its_delete(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A convergent tokenize finds its card's token (read without a lock) and waits to
    commit; another node deletes the token meanwhile and is answered. The tokenize then
    answered the deleted token as the card's, and the log showed it after the delete.
    Fix: the tokens a call answers from the store are read again in its transaction,
    share-locked on PostgreSQL (`_confirm_answers`): a delete that came first makes the
    call run again (and make a new token), one that comes later waits for its commit."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
        tokenized, deleted, delete_first = _tokenize_hit_and_delete(
            engine,
            nodes,
            first.token,
            lambda: nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT)),
        )
        assert deleted is True, deleted
        assert isinstance(tokenized, TokenRecord), tokenized
        trail = _trail(engine, first.token_id)
        _answered_before_its_end(trail)
        if delete_first:  # answered "deleted" first, the card gets a new token
            assert tokenized.token != first.token, trail
        if tokenized.token != first.token:
            assert tokenized.existing is False
            assert nodes.one.detokenize(GETNET, tokenized.token).pan == VISA
        else:
            assert trail[-1] == ("delete", "shredded"), trail
        assert _row(engine, first.token).ciphertext is None
    finally:
        nodes.close()


def test_finding_an_idempotent_replay_is_never_answered_after_its_delete(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A retry with an idempotency key finds its token (read without a lock) and waits
    to commit; another node deletes the token meanwhile. The retry then answered the
    deleted token, after its delete. Fix: as for a convergent hit; run again, the retry
    is told its key's token was deleted (`TokenDeleted`)."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        request = TokenizeRequest(VISA, "card_random", idempotency_key="order-31")
        first = nodes.one.tokenize(PAYMENTS, request)
        tokenized, deleted, delete_first = _tokenize_hit_and_delete(
            engine, nodes, first.token, lambda: nodes.one.tokenize(PAYMENTS, request)
        )
        assert deleted is True, deleted
        trail = _trail(engine, first.token_id)
        _answered_before_its_end(trail)
        if isinstance(tokenized, TokenRecord):  # before the delete
            assert not delete_first, trail
            assert tokenized.token == first.token
            assert trail[-1] == ("delete", "shredded"), trail
        else:
            assert isinstance(tokenized, TokenDeleted), tokenized
    finally:
        nodes.close()


def _write_held(
    engine: Engine, token: str, first: Callable[[], object], second: Callable[[], object]
) -> tuple[object, object]:
    """`first` then `second`, each on its node, both come to `token`'s row while another
    session holds it (PostgreSQL; `first` gets it first); what each answered."""
    held, calls = _Held(engine, token), _Calls()
    calls.start(first)
    held.waiters(1)
    calls.start(second)
    held.waiters(2)
    held.release()
    one, two = calls.join()
    return one, two


def test_finding_a_tokenize_never_reseals_a_card_into_a_deleted_token(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A tokenize carrying card details finds its card's token live and reseals the
    details into it (by the row's id alone), waiting on the row while another node's
    delete shreds it. Its write then put a fresh ciphertext of the card back into the
    shredded row (a tombstone holding the PAN: the crypto-shred undone) and it answered
    the deleted token. Fix: a reseal writes only over the sealing it read (its nonce):
    else the call runs again, and the card gets a new token."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
        deleted, tokenized = _write_held(
            engine,
            first.token,
            lambda: nodes.two.delete(ERASER, first.token),
            lambda: nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, expiry="03/29")),
        )
        assert deleted is True, deleted
        assert isinstance(tokenized, TokenRecord), tokenized
        row = _row(engine, first.token)
        assert (row.ciphertext, row.nonce, row.fingerprint) == (None, None, None)
        trail = _trail(engine, first.token_id)
        _answered_before_its_end(trail)
        if engine.dialect.name == "postgresql":  # the delete held the row first
            assert tokenized.token != first.token
        if tokenized.token != first.token:
            assert nodes.one.detokenize(GETNET, tokenized.token).expiry == "2029-03"
    finally:
        nodes.close()


def test_finding_a_convergent_hit_never_outlives_a_purge_into_a_shredded_token(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The purge on one node shreds a token whose life ended by its clock while a
    tokenize on another (its clock a little behind) found the token live and waits on
    its row to make it live for ever. Its write, conditioned on the life alone, then
    made the shredded row live for ever, and the tokenize answered the purged token,
    its entry after the purge's. Fix: as for a delete (`_confirm_answers`)."""
    nodes = _Nodes(engine, hsm_provider)
    purger, tokenizer = nodes.clocks[1], nodes.clocks[0]
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, ttl_seconds=60))
        purger.now = NOW + timedelta(seconds=61)
        tokenizer.now = NOW + timedelta(seconds=59)
        purged, tokenized = _write_held(
            engine,
            first.token,
            nodes.two.purge_expired,
            lambda: nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT)),
        )
        assert isinstance(tokenized, TokenRecord), tokenized
        row = _row(engine, first.token)
        trail = _trail(engine, first.token_id)
        if purged == 1:
            assert row.ciphertext is None
            _answered_before_its_end(trail)
            assert tokenized.token != first.token, trail
            assert row.expires_at is not None  # the shredded row keeps the life it had
        else:  # SQLite, the tokenize first: it made the token live for ever, unshredded
            assert (purged, tokenized.token, tokenized.expires_at) == (0, first.token, None)
            assert row.ciphertext is not None
            assert row.expires_at is None
    finally:
        nodes.close()


def test_finding_a_convergent_hit_answers_the_token_as_an_update_left_it(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """An update changes a token's metadata while a convergent tokenize of its card,
    which read the token before, waits on its row to make it live for ever. The
    tokenize committed after the update and answered the metadata the update had
    replaced. Fix: the answer is the row as it stands when the call commits (read again,
    `_confirm_answers`: the call runs again if it moved)."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(
            PAYMENTS, TokenizeRequest(VISA, CONVERGENT, ttl_seconds=600, metadata={"v": "1"})
        )
        change = TokenUpdate(metadata={"v": "2"})
        updated, tokenized = _write_held(
            engine,
            first.token,
            lambda: nodes.two.update(PAYMENTS, first.token, change),
            lambda: nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT)),
        )
        assert isinstance(updated, TokenRecord), updated
        assert isinstance(tokenized, TokenRecord), tokenized
        assert tokenized.token == first.token
        assert tokenized.expires_at is None
        assert _row(engine, first.token).expires_at is None
        if engine.dialect.name == "postgresql":  # the update held the row first
            assert tokenized.metadata == {"v": "2"}
    finally:
        nodes.close()


def test_finding_a_delete_never_shreds_again_a_token_the_purge_shredded(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The purge and a delete on two nodes come to one expired token; the purge shreds
    it first. The delete's write, by the row's id alone (its read took no lock), then
    shredded the tombstone again (its time moved) and the delete was answered and
    audited "shredded": two entries each saying it shredded the token. Fix: a delete
    shreds only a row not yet shredded, and answers "already deleted" otherwise."""
    nodes = _Nodes(engine, hsm_provider)
    purger, deleter = nodes.clocks[1], nodes.clocks[0]
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, ttl_seconds=60))
        purger.now = NOW + timedelta(seconds=61)
        deleter.now = NOW + timedelta(seconds=62)
        purged, deleted = _write_held(
            engine,
            first.token,
            nodes.two.purge_expired,
            lambda: nodes.one.delete(PAYMENTS, first.token),
        )
        trail = _trail(engine, first.token_id)
        shredded = [e for e in trail if e in {("purge", "expired"), ("delete", "shredded")}]
        assert len(shredded) == 1, trail
        if purged == 1:
            assert deleted is False, trail
            assert trail[-1] == ("delete", "already deleted"), trail
            assert _row(engine, first.token).deleted_at is not None
    finally:
        nodes.close()


def test_finding_two_deletes_of_one_token_shred_it_once(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """Two nodes delete one token at once: both read it live. Both were answered that
    they shredded it (the second wrote the tombstone again). Fix: as for the purge."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
        one, two = _write_held(
            engine,
            first.token,
            lambda: nodes.one.delete(PAYMENTS, first.token),
            lambda: nodes.two.delete(ERASER, first.token),
        )
        assert sorted([one, two], key=str) == [False, True], (one, two)
        trail = _trail(engine, first.token_id)
        assert [e for e in trail if e[0] == "delete"] == [
            ("delete", "shredded"),
            ("delete", "already deleted"),
        ], trail
    finally:
        nodes.close()


def test_an_update_racing_a_delete_never_writes_the_shredded_token(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """Held: an update reads its row under a lock (`_row_to_update`), so after a delete
    that came first it finds the token gone, and a delete after it waits."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
        deleted, updated = _write_held(
            engine,
            first.token,
            lambda: nodes.two.delete(ERASER, first.token),
            lambda: nodes.one.update(PAYMENTS, first.token, TokenUpdate(expiry="03/29")),
        )
        assert deleted is True
        row = _row(engine, first.token)
        assert (row.ciphertext, row.nonce) == (None, None)
        trail = _trail(engine, first.token_id)
        if isinstance(updated, TokenNotFound):
            assert all(e[0] != "token.update" for e in trail), trail
        else:
            assert isinstance(updated, TokenRecord), updated
            assert engine.dialect.name == "sqlite"
            assert trail.index(("token.update", "None")) < trail.index(("delete", "shredded"))
    finally:
        nodes.close()


def test_finding_a_reveal_is_never_answered_after_its_delete(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """A detokenize reads its token (without a lock) and waits to commit; another node
    deletes the token meanwhile and is answered. The reveal was then answered the PAN
    after the delete was, its entry after the delete's."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
        nodes.one.detokenize(GETNET, first.token)  # GETNET's bucket, to hold
        revealed, deleted, delete_first = answered_while_held(
            _HeldBucket(engine, GETNET.identity),
            lambda: nodes.one.detokenize(GETNET, first.token),
            lambda: nodes.two.delete(ERASER, first.token),
        )
        assert deleted is True, deleted
        trail = _trail(engine, first.token_id)
        _answered_before_its_end(trail)
        if delete_first:  # answered "deleted" first: the PAN is never revealed after
            assert isinstance(revealed, TokenNotFound), revealed
        if not isinstance(revealed, TokenNotFound):  # before the delete
            assert getattr(revealed, "pan", None) == VISA, revealed
            assert trail[-1] == ("delete", "shredded"), trail
    finally:
        nodes.close()


def test_finding_a_fingerprint_rotation_never_fingerprints_a_deleted_token(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """A fingerprint key rotation reads a batch of live rows (no lock) and writes each
    one's new fingerprint by its id alone, waiting on a row a delete shreds meanwhile.
    Its write then put a fingerprint of the card back on the tombstone: a value of the
    PAN kept for a deleted token, and the card's convergent token in the domain from
    then on (every tokenize of the card answered, or ran again on, the deleted token).
    Fix: the rotation writes a row's new fingerprint only over the old one it read."""
    service, rotation = rig
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
    ceremony = rotation.propose(ALICE, "fingerprint")
    rotation.approve(BOB, ceremony.id)
    deleted, _ = _write_held(
        engine,
        first.token,
        lambda: service.delete(PAYMENTS, first.token),
        rotation.run_pending,
    )
    assert deleted is True, deleted
    row = _row(engine, first.token)
    assert (row.ciphertext, row.fingerprint) == (None, None)
    for _ in range(10_000):
        if rotation.status(ALICE, ceremony.id).state == CeremonyState.COMPLETED:
            break
        rotation.run_pending()
    service._fp_read = 0.0  # see the new key now, not within a second
    again = service.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT))
    assert (again.existing, again.token != first.token) == (False, True)
    assert service.detokenize(GETNET, again.token).pan == VISA


def test_finding_a_tokenize_reseals_over_the_details_an_update_left(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """An update gives a token its cardholder's name while a convergent tokenize of its
    card, carrying a new expiry, read the token before and waits on its row to reseal
    it. The tokenize merged its expiry over the details it had read and wrote them by
    the row's id: the name the update had just been answered for was lost. Fix: a
    reseal writes only over the sealing it read (`_reseal`), else the call runs again
    and merges over the update's."""
    nodes = _Nodes(engine, hsm_provider)
    try:
        first = nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, expiry="03/27"))
        updated, tokenized = _write_held(
            engine,
            first.token,
            lambda: nodes.two.update(
                PAYMENTS, first.token, TokenUpdate(cardholder_name="JANE Q CARDHOLDER")
            ),
            lambda: nodes.one.tokenize(PAYMENTS, TokenizeRequest(VISA, CONVERGENT, expiry="03/29")),
        )
        assert isinstance(updated, TokenRecord), updated
        assert isinstance(tokenized, TokenRecord), tokenized
        assert tokenized.token == first.token
        card = nodes.one.detokenize(GETNET, first.token)
        assert card.expiry == "2029-03"
        if engine.dialect.name == "postgresql":  # the update held the row first
            assert card.cardholder_name == "JANE Q CARDHOLDER"
    finally:
        nodes.close()


def test_a_data_key_rotation_never_reseals_a_deleted_token(
    rig: tuple[VaultService, KeyRotation], engine: Engine
) -> None:
    """Held: a data key rotation reads a batch of rows (no lock) and writes each one's
    new sealing only while the row is still under the old key version
    (`_REENCRYPT`); a delete that shredded the row meanwhile cleared its version, so
    the tombstone stays empty. (An update seals under the new version, which the
    rotation made active before its batches, so the rotation leaves it too.)"""
    service, rotation = rig
    first = service.tokenize(PAYMENTS, TokenizeRequest(VISA, "card_random"))
    ceremony = rotation.propose(ALICE, "data")
    rotation.approve(BOB, ceremony.id)
    deleted, _ = _write_held(
        engine,
        first.token,
        lambda: service.delete(PAYMENTS, first.token),
        rotation.run_pending,
    )
    assert deleted is True, deleted
    row = _row(engine, first.token)
    assert (row.ciphertext, row.nonce, row.key_version) == (None, None, None)
