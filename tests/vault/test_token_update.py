"""Token update (`VaultService.update`, PATCH /v1/tokens/{token}) through the vault
service, on SQLite and PostgreSQL and both HSMs: a reissued card's new expiry reaches
the sealed card of a token whose owner holds only the token.

Attacks first. What a stolen certificate granted ``update`` can and cannot do:

- it can change the metadata, the life (shorten it to a second, or make the token
  permanent, as tokenize could) and the expiry and cardholder name of the live tokens
  of its own domain only: each change is one ``token.update`` entry naming the parts
  changed, never their values;
- it cannot read anything it could not before: the answer is `token_info`'s (never the
  PAN, the expiry or the name);
- it cannot put a PAN or a security code anywhere (no such field; metadata and names
  that look like one are refused as tokenize refuses them);
- it cannot reach another domain's token (not even one it may read), a deleted, expired
  or never-made one: one `TokenNotFound`, charged like a hit (no oracle);
- it cannot revive a shredded token by racing its delete, nor lose another update's
  change by racing it;
- it cannot update without its audit entry (fail closed), nor past its rate limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.errors import AuditWriteFailed
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied, PolicyInvalid, RateLimited
from policies.loader import parse_policy
from policies.models import Action
from tests.support.audit_trail import break_audit_writes
from tests.support.locks import Calls, HeldRow, waiting_on_locks
from tests.vault.conftest import GETNET, LEDGER, PAYMENTS, TEST_POLICY
from vault.errors import (
    CardExpired,
    InvalidCardholderName,
    InvalidExpiry,
    InvalidInput,
    InvalidMetadata,
    InvalidTTL,
    SensitiveAuthenticationData,
    TokenNotFound,
    VaultError,
)
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, TokenRecord, TokenUpdate, VaultService

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")
SHOP2 = CallContext("spiffe://cofre/shop2", "req-shop2")
READER = CallContext("spiffe://cofre/reader", "req-reader")
SLOW = CallContext("spiffe://cofre/slow", "req-slow")

POLICY = (
    TEST_POLICY.replace('"metadata", "delete"]', '"metadata", "delete", "update"]', 1)
    + """
# Another shop: its own domain, granted update there.
[identities."spiffe://cofre/shop2"]
operations = ["tokenize", "metadata", "update"]
formats = ["card_random"]

# Granted update, and may read payments' tokens: a write never crosses domains.
[identities."spiffe://cofre/reader"]
operations = ["metadata", "update"]
read_domains = ["spiffe://cofre/payments"]

[identities."spiffe://cofre/slow"]
operations = ["tokenize", "update"]
formats = ["card_random"]
rate_limit = { per_second = 0.001, burst = 2 }
"""
)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _vault(engine: Engine, provider: HSMProvider, clock: Callable[[], datetime]) -> VaultService:
    service = VaultService(
        engine, provider, PolicyEngine(parse_policy(POLICY, kind="toml").policy), clock=clock
    )
    service.initialize()
    return service


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider, clock: Clock) -> Iterator[VaultService]:
    service = _vault(engine, hsm_provider, clock)
    yield service
    service.close()


def _card(vault: VaultService, ctx: CallContext = PAYMENTS, **extra: Any) -> str:
    request = TokenizeRequest(pan=extra.pop("pan", VISA), format="card_random", **extra)
    return vault.tokenize(ctx, request).token


def _entries(engine: Engine, action: str = "token.update") -> list[str]:
    with engine.connect() as c:
        payloads = c.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        return [p for p in payloads if f'"action":"{action}"' in p]


def _row(engine: Engine, token: str) -> Any:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT * FROM tokens WHERE token = :t"), {"t": token}).one()


# ------------------------------------------------------------------ attacks
def test_other_domains_deleted_expired_and_unknown_tokens_are_one_answer(
    vault: VaultService, engine: Engine, clock: Clock
) -> None:
    """Each is the same `TokenNotFound` (same message), charged, and changes nothing:
    the answer says nothing of what another domain holds or of what became of a token."""
    theirs = _card(vault, SHOP2, metadata={"order": "theirs"})
    deleted = _card(vault, pan=MC)
    vault.delete(PAYMENTS, deleted)
    expiring = _card(vault, pan=Pan("4000056655665556"), ttl_seconds=60)
    clock.now = NOW + timedelta(seconds=61)
    readable = _card(vault, pan=Pan("4242424242424242"))  # payments' token: READER reads it
    change = TokenUpdate(metadata={"order": "mine"}, expiry="03/30")
    answers = []
    for ctx, token in [
        (PAYMENTS, theirs),
        (PAYMENTS, deleted),
        (PAYMENTS, expiring),
        (PAYMENTS, "tok_never_made"),
        (PAYMENTS, "x" * 65),
        (READER, readable),
    ]:
        with pytest.raises(TokenNotFound) as caught:
            vault.update(ctx, token, change)
        answers.append((type(caught.value), str(caught.value), caught.value.code))
    assert len(set(answers)) == 1
    assert vault.token_info(SHOP2, theirs).metadata == {"order": "theirs"}
    assert vault.token_info(PAYMENTS, readable).metadata == {}
    assert _row(engine, deleted).ciphertext is None
    failed = _entries(engine)
    assert len(failed) == 6
    assert all('"outcome":"failed"' in e and "token_not_found" in e for e in failed)


def test_a_miss_is_charged_like_a_hit(vault: VaultService, clock: Clock) -> None:
    """The rate limit counts misses too: a caller cannot probe tokens for free."""
    _card(vault, SLOW)
    with pytest.raises(TokenNotFound):
        vault.update(SLOW, "tok_never_made", TokenUpdate(metadata={"a": "b"}))
    with pytest.raises(RateLimited):
        vault.update(SLOW, "tok_never_made", TokenUpdate(metadata={"a": "b"}))


def test_an_identity_without_update_is_denied_and_audited(
    vault: VaultService, engine: Engine
) -> None:
    token = _card(vault, metadata={"order": "1"})
    with pytest.raises(PolicyDenied):
        vault.update(LEDGER, token, TokenUpdate(metadata={"order": "2"}))
    assert vault.token_info(PAYMENTS, token).metadata == {"order": "1"}
    (denied,) = _entries(engine)
    assert '"outcome":"denied"' in denied
    assert LEDGER.identity in denied


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (TokenUpdate(), InvalidInput),
        (TokenUpdate(metadata={"note": "4111111111111111"}), InvalidMetadata),
        (TokenUpdate(metadata={"note": "4111 1111 1111 1111"}), InvalidMetadata),
        (TokenUpdate(metadata={"4111111111111111": "x"}), InvalidMetadata),
        (TokenUpdate(metadata={f"k{i}": "v" for i in range(17)}), InvalidMetadata),
        (TokenUpdate(metadata={"cvv": "123"}), SensitiveAuthenticationData),
        (TokenUpdate(ttl_seconds=0, sets_ttl=True), InvalidTTL),
        (TokenUpdate(ttl_seconds=10 * 366 * 24 * 3600 + 1, sets_ttl=True), InvalidTTL),
        (TokenUpdate(ttl_seconds=True, sets_ttl=True), InvalidTTL),
        (TokenUpdate(expiry="10/26"), CardExpired),
        (TokenUpdate(expiry="2026-13"), InvalidExpiry),
        (TokenUpdate(expiry="9999-12"), InvalidExpiry),
        (TokenUpdate(cardholder_name="ZOE 4111111111111111"), InvalidCardholderName),
        (TokenUpdate(cardholder_name="A" * 65), InvalidCardholderName),
        # One bad part refuses the whole update: the good part is not written either.
        (TokenUpdate(metadata={"order": "2"}, expiry="2026-13"), InvalidExpiry),
    ],
)
def test_bad_input_is_refused_as_tokenize_refuses_it_and_nothing_changes(
    vault: VaultService, engine: Engine, change: TokenUpdate, error: type[VaultError]
) -> None:
    token = _card(vault, metadata={"order": "1"}, expiry="03/27", cardholder_name="ZOE A")
    before = _row(engine, token)
    with pytest.raises(error) as caught:
        vault.update(PAYMENTS, token, change)
    assert "4111" not in str(caught.value)
    after = _row(engine, token)
    assert (after.metadata, after.expires_at, bytes(after.ciphertext)) == (
        before.metadata,
        before.expires_at,
        bytes(before.ciphertext),
    )
    (failed,) = _entries(engine)
    assert '"outcome":"failed"' in failed
    assert error.code in failed
    assert "4111" not in failed


def test_no_update_without_its_audit_entry(vault: VaultService, engine: Engine) -> None:
    token = _card(vault, expiry="03/27", metadata={"order": "1"})
    before = _row(engine, token)
    break_audit_writes(engine)
    with pytest.raises(AuditWriteFailed):
        vault.update(PAYMENTS, token, TokenUpdate(expiry="03/30", metadata={"order": "2"}))
    after = _row(engine, token)
    assert (after.metadata, bytes(after.ciphertext)) == (before.metadata, bytes(before.ciphertext))


# ------------------------------------------------------------------ the interface
def test_a_reissued_cards_new_expiry_reaches_the_sealed_card(
    vault: VaultService, engine: Engine
) -> None:
    """The VAU / ABU case: only the expiry changes; the PAN and the name stay, sealed
    together as tokenize seals them (nothing in clear in the row), and a reveal shows
    the new expiry."""
    token = _card(vault, expiry="03/27", cardholder_name="Zo\u00eb A")
    before = _row(engine, token)
    record = vault.update(PAYMENTS, token, TokenUpdate(expiry="03/30"))
    assert record == vault.token_info(PAYMENTS, token)
    revealed = vault.detokenize(GETNET, token)
    assert (revealed.pan, revealed.expiry, revealed.cardholder_name) == (
        VISA,
        "2030-03",
        "Zo\u00eb A",
    )
    assert vault.detokenize_masked(PAYMENTS, token).expiry == "2030-03"
    after = _row(engine, token)
    assert bytes(after.nonce) != bytes(before.nonce)
    assert b"2030" not in bytes(after.ciphertext)
    assert b"4111" not in bytes(after.ciphertext)
    assert after.fingerprint == before.fingerprint  # the same card: lookup still finds it
    # Then the name alone: the new expiry stays.
    vault.update(PAYMENTS, token, TokenUpdate(cardholder_name="  ZOE   B "))
    revealed = vault.detokenize(GETNET, token)
    assert (revealed.expiry, revealed.cardholder_name) == ("2030-03", "ZOE B")
    # A token stored without details gets them.
    bare = _card(vault, pan=MC)
    vault.update(PAYMENTS, bare, TokenUpdate(expiry="2031-01", cardholder_name="AL"))
    revealed = vault.detokenize(GETNET, bare)
    assert (revealed.pan, revealed.expiry, revealed.cardholder_name) == (MC, "2031-01", "AL")


def test_metadata_and_life(vault: VaultService, engine: Engine, clock: Clock) -> None:
    token = _card(vault, metadata={"order": "1", "old": "x"}, ttl_seconds=60)
    record = vault.update(PAYMENTS, token, TokenUpdate(metadata={"order": "2"}))
    assert record.metadata == {"order": "2"}
    assert record.expires_at == NOW + timedelta(seconds=60)  # untouched
    clock.now = NOW + timedelta(seconds=30)
    record = vault.update(PAYMENTS, token, TokenUpdate(ttl_seconds=3600, sets_ttl=True))
    assert record.expires_at == NOW + timedelta(seconds=3630)
    assert record.metadata == {"order": "2"}
    assert vault.token_info(PAYMENTS, token) == record
    clock.now = NOW + timedelta(seconds=3000)  # past the first life: still live
    permanent = vault.update(PAYMENTS, token, TokenUpdate(ttl_seconds=None, sets_ttl=True))
    assert permanent.expires_at is None
    assert vault.update(PAYMENTS, token, TokenUpdate(metadata={})).metadata == {}
    assert vault.token_info(PAYMENTS, token).expires_at is None
    # A shortened life ends: the purge shreds the token as any expired one.
    vault.update(PAYMENTS, token, TokenUpdate(ttl_seconds=1, sets_ttl=True))
    clock.now += timedelta(seconds=2)
    assert vault.purge_expired() == 1
    assert _row(engine, token).ciphertext is None


def test_the_audit_entry_names_the_parts_never_their_values(
    vault: VaultService, engine: Engine
) -> None:
    token = _card(vault)
    vault.update(
        PAYMENTS,
        token,
        TokenUpdate(
            metadata={"order": "ORD-77"},
            expiry="07/31",
            cardholder_name="ZOE QUINTERO",
            ttl_seconds=600,
            sets_ttl=True,
        ),
    )
    (entry,) = _entries(engine)
    assert '"outcome":"success"' in entry
    assert PAYMENTS.identity in entry
    assert '"fields":"cardholder_name,expiry,metadata,ttl_seconds"' in entry
    assert (NOW + timedelta(seconds=600)).isoformat() in entry
    for value in ("ORD-77", "order", "2031", "07/31", "QUINTERO"):
        assert value not in entry
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT payload FROM audit_entries")).scalars().all()
    assert not any("QUINTERO" in row or "2031-07" in row for row in rows)


# ------------------------------------------------------------------ races
_waiting_on_locks = waiting_on_locks
_Calls = Calls


class _Held(HeldRow):
    """The token's row locked by another session (PostgreSQL), or the whole store held
    by a writer (SQLite), until `release`."""

    def __init__(self, engine: Engine, token: str) -> None:
        super().__init__(
            engine, "SELECT id FROM tokens WHERE token = :t FOR UPDATE", {"t": token}, one=False
        )


def test_two_nodes_updating_one_token_both_apply(
    engine: Engine, hsm_provider: HSMProvider, clock: Clock
) -> None:
    """Two vault nodes (two services, two group committers) update one token at once,
    one its expiry and the other its name: both reads happen before either write
    (the row held elsewhere meanwhile), and neither change is lost."""
    one, two = _vault(engine, hsm_provider, clock), _vault(engine, hsm_provider, clock)
    try:
        token = _card(one, expiry="03/27", cardholder_name="ZOE A", metadata={"m": "0"})
        held, calls = _Held(engine, token), _Calls()
        calls.start(lambda: one.update(PAYMENTS, token, TokenUpdate(expiry="03/30")))
        calls.start(lambda: two.update(PAYMENTS, token, TokenUpdate(cardholder_name="ZOE B")))
        held.waiters(2)
        held.release()
        assert all(not isinstance(result, Exception) for result in calls.join())
        revealed = one.detokenize(GETNET, token)
        assert (revealed.pan, revealed.expiry, revealed.cardholder_name) == (
            VISA,
            "2030-03",
            "ZOE B",
        )
        assert len([e for e in _entries(engine) if '"outcome":"success"' in e]) == 2
    finally:
        one.close()
        two.close()


def test_updates_in_one_commit_group_both_apply(vault: VaultService, engine: Engine) -> None:
    """Behind a call the committer is stuck in, the next updates of one token queue and
    run as one group: each applies over the one before it."""
    token = _card(vault, expiry="03/27", cardholder_name="ZOE A")
    held, calls = _Held(engine, token), _Calls()
    calls.start(lambda: vault.update(PAYMENTS, token, TokenUpdate(metadata={"a": "1"})))
    held.waiters(1)
    calls.start(lambda: vault.update(PAYMENTS, token, TokenUpdate(expiry="03/30")))
    calls.start(lambda: vault.update(PAYMENTS, token, TokenUpdate(cardholder_name="ZOE B")))
    calls.start(lambda: vault.update(PAYMENTS, token, TokenUpdate(ttl_seconds=600, sets_ttl=True)))
    held.release()
    assert all(not isinstance(result, Exception) for result in calls.join())
    revealed = vault.detokenize(GETNET, token)
    assert (revealed.expiry, revealed.cardholder_name) == ("2030-03", "ZOE B")
    info = vault.token_info(PAYMENTS, token)
    assert (info.metadata, info.expires_at) == ({"a": "1"}, NOW + timedelta(seconds=600))


@pytest.mark.parametrize("first", ["delete", "update"])
def test_an_update_racing_a_delete_never_revives_the_token(
    engine: Engine, hsm_provider: HSMProvider, clock: Clock, first: str
) -> None:
    """Delete and update of one token on two nodes, both past their reads before either
    writes: whichever commits first, the token ends shredded, and an update answered
    success was written before the delete (its entry first)."""
    one, two = _vault(engine, hsm_provider, clock), _vault(engine, hsm_provider, clock)
    try:
        token = _card(one, expiry="03/27")
        held, calls = _Held(engine, token), _Calls()
        ops: dict[str, Callable[[], object]] = {
            "delete": lambda: one.delete(PAYMENTS, token),
            "update": lambda: two.update(PAYMENTS, token, TokenUpdate(expiry="03/30")),
        }
        calls.start(ops[first])
        held.waiters(1)
        calls.start(ops["update" if first == "delete" else "delete"])
        held.waiters(2)
        held.release()
        results = calls.join()
        deleted, updated = results if first == "delete" else results[::-1]
        assert deleted is True
        assert isinstance(updated, TokenRecord | TokenNotFound), updated
        row = _row(engine, token)
        assert row.deleted_at is not None
        assert (row.ciphertext, row.nonce, row.key_version) == (None, None, None)
        with pytest.raises(TokenNotFound):
            one.detokenize(GETNET, token)
        updates = [e for e in _entries(engine) if '"outcome":"success"' in e]
        if updates:  # the update committed first: its entry precedes the delete's
            with engine.connect() as c:
                order = [
                    p
                    for p in c.execute(
                        sa.text("SELECT payload FROM audit_entries ORDER BY id")
                    ).scalars()
                    if '"action":"token.update"' in p or '"action":"delete"' in p
                ]
            assert '"action":"token.update"' in order[0]
    finally:
        one.close()
        two.close()


# ------------------------------------------------------------------ the policy
def test_update_is_a_service_operation_that_holds_no_pan() -> None:
    """A shop's backend outside PCI scope may be granted it (it sends no PAN and gets
    none); officers and auditors may not (split duties: card data is not theirs)."""
    shop = '[identities."spiffe://cofre/shop"]\nscope = "out"\noperations = ["update"]\n'
    rules = parse_policy(shop, kind="toml").policy.identities["spiffe://cofre/shop"]
    assert rules.operations == {Action.UPDATE}
    for role in ("security_officer", "auditor"):
        text = f'[identities."spiffe://cofre/o"]\nrole = "{role}"\noperations = ["update"]\n'
        with pytest.raises(PolicyInvalid, match="update"):
            parse_policy(text, kind="toml")
