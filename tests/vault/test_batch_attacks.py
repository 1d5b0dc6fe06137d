"""Batch tokenize, idempotency keys, lookup and delete, attacked from one stolen client
certificate of the payment service (the batch review).

Each test is the attack as its holder would run it, and what stops it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import RateLimited
from policies.formats import BUILTIN_FORMATS, FormatSpec
from policies.loader import parse_policy
from tests.support.pans import GENERATED, card_number
from tests.support.policies import vault_on
from vault import tokens as tokens_module
from vault.errors import OracleSuspected
from vault.keyring import KeyPurpose
from vault.pan import Pan, luhn_check_digit
from vault.service import CallContext, TokenizeRequest, VaultService
from vault.storage.schema import tokens

POLICY = """
[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "lookup", "metadata", "delete"]
formats = ["pan_bin6_last4", "pan_fpe", "uuid"]
reveal = "masked"
# No refill meanwhile: every unit a call spends stays spent for the test.
rate_limit = { per_second = 0.001, burst = 2010 }
oracle_guard = { max_pans_per_bucket = 10 }

[identities."spiffe://cofre/looker"]
operations = ["tokenize", "lookup"]
formats = ["pan_bin6_last4"]
rate_limit = { per_second = 0.001, burst = 12 }
oracle_guard = { max_pans_per_bucket = 10 }
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-batch-review")
LOOKER = CallContext("spiffe://cofre/looker", "req-batch-review-lookup")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _bucket(count: int) -> list[str]:
    """`count` different 16-digit cards of one BIN and last four (411111...0006)."""
    bodies = (f"411111{i:06d}000" for i in range(100 * count))
    cards = [b + luhn_check_digit(b) for b in bodies if luhn_check_digit(b) == "6"][:count]
    GENERATED.update(cards)  # the session's leak scan looks for them byte for byte
    return cards


@pytest.mark.hsm
def test_a_batch_the_oracle_guard_refuses_still_costs_its_rate(vault: VaultService) -> None:
    """A batch of 999 cards of any buckets and one new card of a bucket the guard has
    filled is refused 429 oracle_suspected, but only in its transaction, after the
    fingerprints of all 1,000 cards (HSM HMACs) and their first candidates: the refusal
    rolled the rate charge back with everything else, so the call was free and could be
    sent without end (a burst of 2,010 admitted five such batches and would admit any
    number: 5,000 HMACs, each refusal one unit of the per-process refusal bucket). A
    refused guess now costs its units like a served one, so the burst bounds the HSM
    work a stolen certificate can make the vault do."""
    bucket = _bucket(15)
    for card in bucket[:10]:  # the guard's limit: a busy merchant's day, or the attacker's
        vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_bin6_last4"))
    filler = [card_number("5", serial) for serial in range(999)]  # one card per bucket
    fingerprinted: list[int] = []
    prints = vault._card_prints

    def counted(pans: list[str]) -> object:
        fingerprinted.append(len(pans))
        return prints(pans)

    vault._card_prints = counted  # type: ignore[method-assign]
    outcomes: list[str] = []
    for guess in bucket[10:]:
        batch = [TokenizeRequest(Pan(card), "pan_bin6_last4") for card in [*filler, guess]]
        try:
            vault.tokenize_batch(PAYMENTS, batch)
            outcomes.append("served")
        except (OracleSuspected, RateLimited) as refused:
            outcomes.append(refused.code)
    # 10 units for the bucket, then 1,000 for each refused batch: the third finds none.
    assert outcomes == ["oracle_suspected", "oracle_suspected"] + ["rate_limited"] * 3
    assert sum(fingerprinted) == 2000


@pytest.mark.hsm
def test_a_lookup_the_oracle_guard_refuses_still_costs_its_rate(vault: VaultService) -> None:
    """The same for lookup: refused after its HMAC, its charge rolled back, so guesses
    past the guard were free for the bucket; now each costs its unit."""
    bucket = _bucket(15)
    for card in bucket[:10]:
        vault.tokenize(LOOKER, TokenizeRequest(Pan(card), "pan_bin6_last4"))
    outcomes: list[str] = []
    for guess in bucket[10:]:
        try:
            vault.lookup(LOOKER, Pan(guess))
            outcomes.append("served")
        except (OracleSuspected, RateLimited) as refused:
            outcomes.append(refused.code)
    assert outcomes == ["oracle_suspected", "oracle_suspected"] + ["rate_limited"] * 3


@pytest.mark.hsm
def test_guesses_either_side_of_midnight_are_one_days_guesses(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """The guard's windows were fixed UTC days: ten guesses of one BIN and last four in
    the last seconds of a day and ten more in the first seconds of the next were all
    answered, twice the day's limit in twenty seconds (the security review's residual).
    The day before counts with the day under way, by tokenize and lookup alike."""
    midnight = datetime(2026, 12, 3, tzinfo=UTC)
    now = [midnight - timedelta(seconds=10)]
    policy = PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    svc = VaultService(engine, hsm_provider, policy, clock=lambda: now[0])
    svc.initialize()
    try:
        bucket = _bucket(20)
        for card in bucket[:10]:
            svc.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_bin6_last4"))
            now[0] += timedelta(seconds=1)
        assert now[0] == midnight
        outcomes: list[str] = []
        waits: list[float] = []
        for card in bucket[10:]:
            now[0] += timedelta(seconds=1)
            try:
                if len(outcomes) % 2:
                    svc.lookup(PAYMENTS, Pan(card))
                else:
                    svc.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_bin6_last4"))
                outcomes.append("served")
            except OracleSuspected as refused:
                outcomes.append(refused.code)
                waits.append(refused.retry_after)
        assert outcomes == ["oracle_suspected"] * 10
        # Honest: the day before stops counting when the day under way ends.
        assert waits == [pytest.approx(86_400 - s) for s in range(1, 11)]
        # A card the day before saw is refused too while the count is full (atk47: an
        # answer for it, and a refusal for any other, told the bucket's cards apart).
        with pytest.raises(OracleSuspected):
            svc.tokenize(PAYMENTS, TokenizeRequest(Pan(bucket[0]), "pan_bin6_last4"))
        now[0] = midnight + timedelta(days=1)
        svc.tokenize(PAYMENTS, TokenizeRequest(Pan(bucket[10]), "pan_bin6_last4"))
    finally:
        svc.close()


@pytest.mark.hsm
def test_a_deleted_fpe_token_does_not_lock_its_card_out(vault: VaultService) -> None:
    """An FF1 token is its card's one FF1 output in the domain, and a deleted token's
    tombstone keeps its value: tokenizing the card again after a delete drew that value
    again, found it taken, and had no other candidate, so the card was refused 409
    token_space_exhausted in `pan_fpe` for good. A re-issue takes the FF1 output under
    the next tweak instead."""
    card = card_number("4000", 271828)
    first = vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_fpe"))
    assert vault.delete(PAYMENTS, first.token) is True
    again = vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_fpe"))
    assert again.token != first.token
    assert again.existing is False
    assert vault.delete(PAYMENTS, again.token) is True
    third = vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_fpe"))
    assert third.token not in {first.token, again.token}
    assert vault.detokenize_masked(PAYMENTS, third.token).masked.endswith(card[-4:])


@pytest.mark.hsm
def test_an_expired_fpe_token_is_replaced(engine: Engine, hsm_provider: HSMProvider) -> None:
    """The same through expiry: convergence shreds the expired token and the card gets
    a new one, except in an FF1 format, where the new one was the tombstone's value."""
    now = [datetime.now(UTC)]
    policy = PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    svc = VaultService(engine, hsm_provider, policy, clock=lambda: now[0])
    svc.initialize()
    try:
        card = card_number("4000", 314159)
        request = TokenizeRequest(Pan(card), "pan_fpe", ttl_seconds=60)
        first = svc.tokenize(PAYMENTS, request)
        now[0] += timedelta(seconds=61)
        again = svc.tokenize(PAYMENTS, request)
        assert again.token != first.token
        assert again.existing is False
    finally:
        svc.close()


@pytest.mark.hsm
def test_short_cards_never_have_their_token_space_listed_to_draw_one(
    vault: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch review's trade-off 1, an exhaustion: a 13-digit card in pan_bin6_last4
    leaves 3 free digits, and its first candidate was the first of a list of the whole
    space, 1,000 strings Luhn-checked and shuffled with a call to the OS's generator
    each (~4.8 ms of CPU a card). A served batch of 1,000 such cards in as many buckets
    cost the vault ~5 s of CPU for its 1,000 rate units. A fresh card's first candidate
    is now drawn, as in a large space; the list is for a space whose draws met issued
    tokens. Counted, not timed: how many times the space is listed."""
    listed = [0]  # a count: a failure's message holds no card
    real = tokens_module._enumerate

    def counted(spec: FormatSpec, pan: str) -> list[str]:
        listed[0] += 1
        return real(spec, pan)

    monkeypatch.setattr(tokens_module, "_enumerate", counted)
    cards = [card_number("411111", 1000 + 7 * i, 13) for i in range(50)]
    issued = vault.tokenize_batch(
        PAYMENTS, [TokenizeRequest(Pan(c), "pan_bin6_last4") for c in cards]
    )
    assert len({r.token for r in issued}) == len(cards)
    assert all(
        len(r.token) == 13 and r.token[-4:] == c[-4:] for r, c in zip(issued, cards, strict=True)
    )
    assert listed == [0]


@pytest.mark.hsm
def test_a_card_reissued_many_times_costs_what_its_first_reissue_did(
    vault: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 43: a re-issue tried the card's FF1 outputs under re-issue numbers 1, 2, 3...
    in turn, each taken by one of its own tombstones, so its k-th re-issue computed k+1
    FF1 tokens (cycle-walked) and looked each up, in the commit group's transaction: the
    1,000th cost ~0.4 s of the committer's CPU for one rate unit. Counted, not timed."""
    card = card_number("4000", 161803)
    request = TokenizeRequest(Pan(card), "pan_fpe")
    for _ in range(30):
        assert vault.delete(PAYMENTS, vault.tokenize(PAYMENTS, request).token) is True
    computed = [0]
    encrypt = tokens_module.FpeTokenizer.encrypt

    def counted(self: tokens_module.FpeTokenizer, *args: Any, **kwargs: Any) -> str:
        computed[0] += 1
        return encrypt(self, *args, **kwargs)

    monkeypatch.setattr(tokens_module.FpeTokenizer, "encrypt", counted)
    vault.tokenize(PAYMENTS, request)
    assert computed[0] <= 4  # the first candidate (twice) and a re-issue or two


@pytest.mark.hsm
def test_a_card_with_1024_earlier_fpe_tokens_still_gets_one(
    vault: VaultService, engine: Engine
) -> None:
    """Review 43: re-issues were numbered 1 to 1,023 and then none was left: a card whose
    token expired or was deleted 1,024 times (a short TTL retokenized daily: under three
    years) was refused 409 token_space_exhausted for good again. Its earlier tokens'
    tombstones are written here directly, as the re-issues then numbered them."""
    card = card_number("4000", 141421)
    vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card_number("4000", 100001)), "pan_fpe"))
    keyring = vault.keyring
    fpe = tokens_module.FpeTokenizer(keyring.ff1(keyring.active_version(KeyPurpose.FF1)))
    spec = BUILTIN_FORMATS["pan_fpe"]
    domain = PAYMENTS.identity
    earlier = {fpe.encrypt(spec, Pan(card), domain=domain)}
    earlier.update(
        fpe.encrypt(spec, Pan(card), domain=f"{domain}\x00{reissue}") for reissue in range(1, 1024)
    )
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(tokens),
            [
                {
                    "id": str(uuid.uuid4()),
                    "token": value,
                    "format": "pan_fpe",
                    "convergent": True,
                    "owner": domain,
                    "domain": domain,
                    "created_at": now,
                    "deleted_at": now,
                }
                for value in sorted(earlier)
            ],
        )
    again = vault.tokenize(PAYMENTS, TokenizeRequest(Pan(card), "pan_fpe"))
    assert again.token not in earlier
    assert vault.detokenize_masked(PAYMENTS, again.token).masked.endswith(card[-4:])
