"""Token domains, limits in the database, Luhn validation and scheduled purge (issue 17).

Each attack is written as the holder of one stolen client certificate would try it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import RateLimited
from policies.loader import parse_policy
from tests.support.groups import in_one_group
from tests.support.pans import GENERATED
from tests.support.policies import vault_on
from vault.errors import (
    BatchItemInvalid,
    FormatNotApplicable,
    IdempotencyConflict,
    InvalidPan,
    OracleSuspected,
    QuotaExceeded,
    TokenNotFound,
)
from vault.pan import Pan, luhn_check_digit
from vault.purge import PurgeWorker
from vault.service import CallContext, TokenizeRequest, VaultService
from vault.storage.groupcommit import before_commit
from vault.storage.schema import tokens

VISA = Pan("4111111111111111")
POLICY = """
[formats.card_refuse_small]
type = "random"
on_small_space = "refuse"

[luhn_exempt.acme-store-card]
prefixes = ["6000"]

[identities."spiffe://cofre/payments"]
operations = ["tokenize", "detokenize_masked", "lookup", "metadata", "delete"]
formats = ["pan_bin6_last4", "pan_fpe", "uuid", "card_refuse_small"]
reveal = "masked"

[identities."spiffe://cofre/store"]
operations = ["tokenize", "detokenize_masked", "lookup", "metadata", "delete"]
formats = ["pan_bin6_last4", "pan_fpe", "uuid"]
reveal = "masked"

[identities."spiffe://cofre/checkout"]
description = "shares the payments domain"
domain = "spiffe://cofre/payments"
operations = ["tokenize", "detokenize_masked"]
formats = ["pan_bin6_last4"]
reveal = "masked"

[identities."spiffe://cofre/limited"]
operations = ["tokenize", "delete"]
formats = ["uuid"]
rate_limit = { per_second = 0.001, burst = 2 }

[identities."spiffe://cofre/ledger"]
operations = ["detokenize", "detokenize_masked", "metadata"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
rate_limit = { per_second = 0.001, burst = 5 }
quota = { detokenize_per_day = 3 }
"""
PAYMENTS = CallContext("spiffe://cofre/payments", "req-p")
STORE = CallContext("spiffe://cofre/store", "req-s")
CHECKOUT = CallContext("spiffe://cofre/checkout", "req-c")
LEDGER = CallContext("spiffe://cofre/ledger", "req-l")
LIMITED = CallContext("spiffe://cofre/limited", "req-limited")


@pytest.fixture
def domains(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(tokens)).scalar_one())


@pytest.mark.parametrize("fmt", ["pan_bin6_last4", "pan_fpe", "uuid"])
def test_the_same_card_gives_unrelated_tokens_in_two_domains(
    domains: VaultService, fmt: str
) -> None:
    mine = domains.tokenize(PAYMENTS, TokenizeRequest(VISA, fmt))
    theirs = domains.tokenize(STORE, TokenizeRequest(VISA, fmt))
    assert theirs.token != mine.token
    assert not theirs.existing  # nothing in store's answer depends on payments' tokens
    # Within a domain the format still converges, whichever identity of it asks.
    assert domains.tokenize(PAYMENTS, TokenizeRequest(VISA, fmt)).token == mine.token
    if fmt == "pan_bin6_last4":
        again = domains.tokenize(CHECKOUT, TokenizeRequest(VISA, fmt))
        assert again.token == mine.token
        assert again.existing


def test_another_domains_token_looks_like_no_token(domains: VaultService, engine: Engine) -> None:
    token = domains.tokenize(
        STORE, TokenizeRequest(VISA, "uuid", metadata={"customer": "c-1"})
    ).token
    for attempt in (
        lambda: domains.detokenize_masked(PAYMENTS, token),
        lambda: domains.token_info(PAYMENTS, token),
        lambda: domains.delete(PAYMENTS, token),
    ):
        with pytest.raises(TokenNotFound, match="no such token"):
            attempt()
    # Lookup answers from the caller's own domain only.
    assert domains.lookup(PAYMENTS, VISA) == []
    # The owner's token, its metadata and its ciphertext are untouched.
    assert domains.token_info(STORE, token).metadata == {"customer": "c-1"}
    assert domains.detokenize_masked(STORE, token).masked == VISA.masked()
    before = _count(engine)
    assert domains.delete(STORE, token)
    assert _count(engine) == before  # a tombstone stays


def test_read_domains_let_the_ledger_read_payments_masked(domains: VaultService) -> None:
    token = domains.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4")).token
    revealed = domains.detokenize(LEDGER, token)
    assert revealed.pan is None
    assert revealed.masked == VISA.masked()
    store_token = domains.tokenize(STORE, TokenizeRequest(VISA, "uuid")).token
    with pytest.raises(TokenNotFound):
        domains.detokenize(LEDGER, store_token)


def test_idempotency_keys_are_per_domain(domains: VaultService) -> None:
    request = TokenizeRequest(VISA, "pan_bin6_last4", idempotency_key="order-1")
    first = domains.tokenize(PAYMENTS, request)
    # Any identity of the domain retrying the key gets the same answer...
    retry = domains.tokenize(CHECKOUT, request)
    assert (retry.token, retry.existing) == (first.token, True)
    # ...and the key cannot be reused for another card in the domain,
    other = Pan("5555555555554444")
    with pytest.raises(IdempotencyConflict):
        domains.tokenize(
            CHECKOUT, TokenizeRequest(other, "pan_bin6_last4", idempotency_key="order-1")
        )
    # but in another domain it is another request, not a conflict (no cross-domain oracle).
    theirs = domains.tokenize(
        STORE, TokenizeRequest(other, "pan_bin6_last4", idempotency_key="order-1")
    )
    assert not theirs.existing


def test_a_batch_costs_one_unit_per_item_and_quotas_hold(domains: VaultService) -> None:
    tokens_ = [
        domains.tokenize(PAYMENTS, TokenizeRequest(Pan(p), "uuid")).token
        for p in ("4111111111111111", "5555555555554444", "4012888888881881", "4222222222222")
    ]
    # Quota 3 a day: a batch of 4 is refused whole, and charges nothing.
    with pytest.raises(QuotaExceeded) as refused:
        domains.detokenize_batch(LEDGER, tokens_)
    assert refused.value.retry_after > 0
    assert len(domains.detokenize_batch(LEDGER, tokens_[:3])) == 3
    with pytest.raises(QuotaExceeded):
        domains.detokenize(LEDGER, tokens_[3])
    # Masked reveal is not the detokenize quota, but the rate limit (burst 5, almost
    # no refill) has 2 units left after the 3 above: a batch of N cost N.
    domains.detokenize_masked(LEDGER, tokens_[0])
    domains.detokenize_masked(LEDGER, tokens_[1])
    with pytest.raises(RateLimited, match="retry after"):
        domains.detokenize_masked(LEDGER, tokens_[2])


def test_luhn_failures_are_refused_unless_the_range_is_exempt(domains: VaultService) -> None:
    with pytest.raises(InvalidPan, match="Luhn"):
        domains.tokenize(PAYMENTS, TokenizeRequest(Pan("4111111111111112"), "uuid"))
    with pytest.raises(BatchItemInvalid) as refused:
        domains.tokenize_batch(
            PAYMENTS,
            [TokenizeRequest(VISA, "uuid"), TokenizeRequest(Pan("4111111111111112"), "uuid")],
        )
    assert (refused.value.index, refused.value.item_code) == (1, "invalid_pan")
    with pytest.raises(InvalidPan):
        domains.lookup(PAYMENTS, Pan("4111111111111112"))
    # A named private-label range without a check digit.
    exempt = domains.tokenize(PAYMENTS, TokenizeRequest(Pan("6000123456789013"), "uuid"))
    assert exempt.token


def test_small_spaces_refuse_where_the_format_says(domains: VaultService) -> None:
    thirteen = Pan("4111111111119")  # 13 digits: 3 hidden, 100 possible cards
    with pytest.raises(FormatNotApplicable, match="on_small_space = 'refuse'"):
        domains.tokenize(PAYMENTS, TokenizeRequest(thirteen, "card_refuse_small"))
    # The built-in format answers a fresh token each time instead (no convergence).
    a = domains.tokenize(PAYMENTS, TokenizeRequest(thirteen, "pan_bin6_last4"))
    b = domains.tokenize(PAYMENTS, TokenizeRequest(thirteen, "pan_bin6_last4"))
    assert a.token != b.token
    assert not b.existing


def test_a_purge_that_keeps_failing_is_reported_and_its_recovery_too(
    engine: Engine, hsm_provider: HSMProvider
) -> None:
    """Expired tokens that are not shredded break PCI DSS 3.2.1 while every request is
    still answered: the failing purge shows in readiness (`health.check`) until a tick
    works again."""
    svc = VaultService(engine, hsm_provider, PolicyEngine(parse_policy(POLICY, kind="toml").policy))
    svc.initialize()
    worker = PurgeWorker(svc, interval=0.05)

    def wait_for(done: object) -> None:
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while not done() and datetime.now(UTC) < deadline:  # type: ignore[operator]
            worker._stop.wait(0.05)

    with engine.begin() as connection:  # the table is gone, as after a bad restore
        connection.execute(text("ALTER TABLE tokens RENAME TO tokens_away"))
    worker.start()
    try:
        wait_for(lambda: worker.last_error is not None)
        assert worker.health.check().startswith("failing since "), worker.health.check()
        assert "StorageUnavailable" in worker.health.check()
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE tokens_away RENAME TO tokens"))
        wait_for(lambda: worker.last_error is None)
        assert worker.health.check() == "ok"
    finally:
        worker.stop()


def test_expired_tokens_are_purged_on_schedule(engine: Engine, hsm_provider: HSMProvider) -> None:
    now = [datetime.now(UTC)]
    svc = VaultService(
        engine,
        hsm_provider,
        PolicyEngine(parse_policy(POLICY, kind="toml").policy),
        clock=lambda: now[0],
    )
    svc.initialize()
    worker = PurgeWorker(svc, interval=0.05)
    try:
        token = svc.tokenize(PAYMENTS, TokenizeRequest(VISA, "uuid", ttl_seconds=60)).token
        now[0] += timedelta(seconds=61)
        worker.start()
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while worker.purged < 1 and datetime.now(UTC) < deadline:
            worker._stop.wait(0.05)
        assert worker.purged == 1, worker.last_error
        with engine.connect() as connection:
            row = connection.execute(select(tokens).where(tokens.c.token == token)).one()
        assert row.ciphertext is None
        assert row.fingerprint is None
        assert row.deleted_at is not None
    finally:
        worker.stop()
        svc.close()


def test_refused_calls_spend_no_hsm_calls(domains: VaultService, hsm_provider: HSMProvider) -> None:
    """A spent rate limit, or a batch that alone overfills an oracle bucket, is refused
    before the first HMAC: refused calls cannot use up the HSM (a networked CloudHSM
    serves a few thousand calls a second to the whole platform)."""
    bodies = (f"411111{i:06d}000" for i in range(400))
    cards = [b + luhn_check_digit(b) for b in bodies if luhn_check_digit(b) == "6"][:12]
    GENERATED.update(cards)  # the session's leak scan looks for them byte for byte
    assert len(cards) == 12
    calls: list[str] = []
    previous = hsm_provider.observer
    hsm_provider.observer = lambda operation, _ms: calls.append(operation)
    try:
        # 12 different cards of one BIN and last four in one batch; the guard allows 10.
        with pytest.raises(OracleSuspected):
            domains.tokenize_batch(
                PAYMENTS, [TokenizeRequest(Pan(p), "pan_bin6_last4") for p in cards]
            )
        assert calls == []
        for card in cards[:2]:  # the limited identity's burst is 2
            domains.tokenize(LIMITED, TokenizeRequest(Pan(card), "uuid"))
        calls.clear()
        with pytest.raises(RateLimited):
            domains.tokenize(LIMITED, TokenizeRequest(Pan(cards[2]), "uuid"))
        assert calls == []
    finally:
        hsm_provider.observer = previous


def test_a_refused_reveal_still_costs_its_rate(domains: VaultService) -> None:
    """Missing tokens answered 404 (or a batch's item error) rolled the rate charge back
    with the transaction: over mTLS, four 1,000-item batches of made-up tokens from the
    dev ledger (burst 1,000) were never limited, and each wrote an audit entry. A miss
    costs what a hit costs."""
    with pytest.raises(BatchItemInvalid):
        domains.detokenize_batch(LEDGER, [f"no-such-token-{i}" for i in range(3)])
    with pytest.raises(TokenNotFound):
        domains.detokenize_masked(LEDGER, "no-such-token")
    with pytest.raises(TokenNotFound):
        domains.token_info(LEDGER, "no-such-token")
    with pytest.raises(RateLimited):
        domains.detokenize_masked(LEDGER, "no-such-token")


def test_another_node_spending_the_bucket_is_refused_by_the_charge_and_then_early(
    engine: Engine,
    domains: VaultService,
    hsm_provider: HSMProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The early check admits calls against its last read of the bucket for up to a
    second (`vault._early_room.EarlyRoom`): what another node spent meanwhile is refused by
    the transaction's charge, the limit itself exact across nodes; that call spent its
    HMAC, and the next one reads the bucket and is refused before any HSM call."""
    other = VaultService(
        engine, hsm_provider, PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    )
    other.initialize()
    monkeypatch.setattr(domains._limits.early, "_clock", lambda: 0.0)  # its read stays fresh
    bodies = (f"511111{i:06d}000" for i in range(400))
    cards = [b + luhn_check_digit(b) for b in bodies][:3]
    GENERATED.update(cards)
    calls: list[str] = []
    previous = hsm_provider.observer
    try:
        domains.tokenize(LIMITED, TokenizeRequest(Pan(cards[0]), "uuid"))  # read: room 2
        other.tokenize(LIMITED, TokenizeRequest(Pan(cards[1]), "uuid"))  # the burst spent
        hsm_provider.observer = lambda operation, _ms: calls.append(operation)
        with pytest.raises(RateLimited):
            domains.tokenize(LIMITED, TokenizeRequest(Pan(cards[2]), "uuid"))
        assert calls  # admitted on its read's room: refused by the charge
        calls.clear()
        with pytest.raises(RateLimited):
            domains.tokenize(LIMITED, TokenizeRequest(Pan(cards[2]), "uuid"))
        assert calls == []  # its room used up: read, and refused early
    finally:
        hsm_provider.observer = previous
        other.close()


def _guarded_reruns(service: VaultService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each commit group `service`'s committer runs again, one savepoint
    per operation, from now on."""
    assert service._committer is not None
    reruns: list[int] = []
    guarded = service._committer._commit_each_guarded

    def counted(group: list[Any], *rest: Any) -> None:
        reruns.append(len(group))
        guarded(group, *rest)

    monkeypatch.setattr(service._committer, "_commit_each_guarded", counted)
    return reruns


def test_a_spent_bucket_cannot_make_commit_groups_run_twice_by_revealing(
    domains: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack with one stolen certificate: a caller past its rate limit keeps sending
    detokenize calls. Each one that reaches the committer is refused by its charge,
    which rolls back the whole commit group it met and runs every other caller's
    operation in it again, one savepoint each: the caller's spent limit would double
    the work of everyone it shares a group with. Refused before the committer, as
    tokenize is (`_refuse_early`), it cannot."""
    reruns = _guarded_reruns(domains, monkeypatch)
    for _ in range(5):  # the ledger's burst, spent on misses: a miss costs a hit
        with pytest.raises(TokenNotFound):
            domains.detokenize_masked(LEDGER, "no-such-token")
    assert reruns == []
    for _ in range(20):
        with pytest.raises(RateLimited):
            domains.detokenize_masked(LEDGER, "no-such-token")
        with pytest.raises(RateLimited):
            domains.detokenize_batch(LEDGER, ["no-such-token", "another"])
    assert reruns == []
    # A delete's miss too costs its unit, and is answered without a rerun.
    for _ in range(2):  # the burst
        with pytest.raises(TokenNotFound):
            domains.delete(LIMITED, "no-such-token")
    with pytest.raises(RateLimited):
        domains.delete(LIMITED, "no-such-token")
    assert reruns == []


def test_a_spent_quota_cannot_make_commit_groups_run_twice(
    domains: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above for the daily detokenize quota: once a charge found it used up, this
    process refuses the identity's reveals before the committer for the rest of the
    day (a quota only grows used; another node's spending is still refused by the
    charge). A call that fits what is left still reaches it."""
    reruns = _guarded_reruns(domains, monkeypatch)
    with pytest.raises(BatchItemInvalid):  # 2 of the 3 a day, spent on misses
        domains.detokenize_batch(LEDGER, ["no-such-token", "another"])
    with pytest.raises(QuotaExceeded):  # refused by the charge: its group ran again
        domains.detokenize_batch(LEDGER, ["a", "b"])
    assert len(reruns) == 1
    for _ in range(20):
        with pytest.raises(QuotaExceeded) as refused:
            domains.detokenize_batch(LEDGER, ["a", "b"])
        assert refused.value.retry_after > 0
    assert len(reruns) == 1
    with pytest.raises(TokenNotFound):  # the last unit left: charged
        domains.detokenize(LEDGER, "no-such-token")
    with pytest.raises(QuotaExceeded):
        domains.detokenize(LEDGER, "no-such-token")
    assert len(reruns) == 2


def test_reveals_in_one_commit_group_charge_their_sum_and_exactly_the_limit_passes(
    domains: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reveal's rate charge joins its commit group's sum, made just before the commit
    (issue 21: charged one by one, each locked the bucket's row until the commit). Over
    the burst the group runs again charging each call at once: exactly the calls within
    the limit pass, and each miss costs its unit as alone."""
    assert domains._committer is not None

    def miss() -> str:
        try:
            domains.detokenize_masked(LEDGER, "no-such-token")
        except (TokenNotFound, RateLimited) as exc:
            return exc.code
        return "answered"

    charges: list[int] = []  # the costs charged to the bucket's row
    real = domains._limits.charge_rate

    def charge_rate(*args: Any, deferrable: bool = False, **kwargs: Any) -> None:
        if not deferrable or before_commit(args[0]) is None:
            charges.append(args[3])
        real(*args, deferrable=deferrable, **kwargs)

    monkeypatch.setattr(domains._limits, "charge_rate", charge_rate)
    codes = [future.result(30) for future in in_one_group(domains._committer, [miss] * 3)]
    assert codes == ["token_not_found"] * 3
    assert charges == [3]  # one charge for the group's three
    charges.clear()
    codes = [future.result(30) for future in in_one_group(domains._committer, [miss] * 4)]
    assert codes == ["token_not_found"] * 2 + ["rate_limited"] * 2  # burst 5: 2 left
    assert charges == [4, 1, 1, 1, 1]  # the sum refused, then each at once
