"""A call begun where it must not wait (`cofre.blocking.never_blocking`: the API's event
loop, issue 21). It either reaches its commit without waiting for anything, or raises
`WouldBlock` having written, audited and charged nothing; run again in a thread it does
what it always did. Real SoftHSM2 and the CloudHSM-behaviour shim (a networked HSM:
every call of it may wait), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event

from cofre.blocking import never_blocking
from cofre.errors import WouldBlock
from hsm.provider import HSMProvider
from policies.errors import PolicyDenied
from tests.support.policies import vault_on
from tests.vault.conftest import PAYMENTS, STRANGER, TEST_POLICY
from vault import tokens as tokens_module
from vault.errors import FormatNotApplicable
from vault.models import Pending
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

# A rate limit, so that the early check has a bucket to read (TEST_POLICY has none).
POLICY = TEST_POLICY.replace(
    "oracle_guard = { max_pans_per_bucket = 100000 }",
    "oracle_guard = { max_pans_per_bucket = 100000 }\n"
    "rate_limit = { per_second = 1000, burst = 1000 }",
)
VISA = Pan("4111111111111111")


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    svc = vault_on(engine, hsm_provider, POLICY)
    yield svc
    svc.close()


def _card(n: int, length: int = 16) -> Pan:
    body = f"411111{n:0{length - 7}d}"
    total = 0
    for position, char in enumerate(reversed(body + "0")):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return Pan(body + str((10 - total % 10) % 10))


def _audit_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar_one())


def _stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one())


def _tats(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT identity, tat FROM rate_state")).all())


def _entries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars()
        return [json.loads(p) for p in payloads]


class _Checkouts:
    """The threads that took a database connection from `engine`'s pool."""

    def __init__(self, engine: Engine) -> None:
        self.threads: list[int] = []
        self._engine = engine

    def __enter__(self) -> _Checkouts:
        event.listen(self._engine, "checkout", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine, "checkout", self._seen)

    def _seen(self, *_: object) -> None:
        self.threads.append(threading.get_ident())


def _nothing_done(engine: Engine, call: Callable[[], object]) -> None:
    """`call` raises `WouldBlock` under `never_blocking` and leaves no row, entry or
    charge behind."""
    before = (_audit_count(engine), _stored(engine), _tats(engine))
    with never_blocking(), pytest.raises(WouldBlock):
        call()
    assert (_audit_count(engine), _stored(engine), _tats(engine)) == before


def test_a_warm_tokenize_reaches_its_commit_without_waiting_for_anything(
    vault: VaultService, engine: Engine
) -> None:
    request = TokenizeRequest(_card(1), "pan_bin6_last4")
    if not vault.hsm_is_local:  # a networked HSM: its call is a round trip
        vault.tokenize(PAYMENTS, TokenizeRequest(_card(2), "pan_bin6_last4"))
        _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, request))
        return
    pending: Pending[Any] | None = None
    for attempt in range(5):  # the bucket's read and the key listing are fresh for 1 s
        vault.tokenize(PAYMENTS, TokenizeRequest(_card(10 + attempt), "pan_bin6_last4"))
        with _Checkouts(engine) as checkouts, never_blocking():
            try:
                pending = vault.tokenize_pending(PAYMENTS, request)
            except WouldBlock:
                continue
        assert threading.get_ident() not in checkouts.threads
        break
    assert pending is not None
    pending.committed.result(10)
    record = pending.answer()
    assert record is not None
    assert record.token[-4:] == _card(1).last4
    again = vault.tokenize(PAYMENTS, TokenizeRequest(_card(1), "pan_bin6_last4"))
    assert again.token == record.token  # stored (and convergent)


def test_a_bucket_not_read_yet_is_read_in_a_thread(vault: VaultService, engine: Engine) -> None:
    request = TokenizeRequest(_card(3), "pan_bin6_last4")
    _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, request))
    assert vault.tokenize(PAYMENTS, request).token.startswith("411111")


def test_refusals_are_audited_only_once_in_a_thread(vault: VaultService, engine: Engine) -> None:
    vault.tokenize(PAYMENTS, TokenizeRequest(_card(4), "pan_bin6_last4"))  # warm
    denied = TokenizeRequest(_card(5), "pan_bin6_last4")
    _nothing_done(engine, lambda: vault.tokenize_pending(STRANGER, denied))
    with pytest.raises(PolicyDenied):
        vault.tokenize_pending(STRANGER, denied)
    # A 12-digit card in a format that refuses it: refused before any HSM call.
    short = TokenizeRequest(Pan("411111111116"), "pan_fpe")
    _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, short))
    with pytest.raises(FormatNotApplicable):
        vault.tokenize_pending(PAYMENTS, short)
    refusals = [e for e in _entries(engine) if e["outcome"] in ("denied", "failed")]
    assert [(e["actor"], e["outcome"]) for e in refusals] == [
        (STRANGER.identity, "denied"),
        (PAYMENTS.identity, "failed"),
    ]


def test_a_busy_hsm_session_is_not_waited_for(
    vault: VaultService, engine: Engine, hsm_provider: HSMProvider
) -> None:
    vault.tokenize(PAYMENTS, TokenizeRequest(_card(6), "pan_bin6_last4"))  # warm
    request = TokenizeRequest(_card(7), "pan_bin6_last4")
    if hsm_provider.pool_size != 1:  # the shim: networked, so its every call may wait
        assert not vault.hsm_is_local
        _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, request))
        return
    holding, release = threading.Event(), threading.Event()

    def hold(_session: object) -> None:
        holding.set()
        assert release.wait(10)

    holder = threading.Thread(target=hsm_provider._run, args=(hold,))
    holder.start()
    try:
        assert holding.wait(10)
        _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, request))
    finally:
        release.set()
        holder.join(10)
    assert vault.tokenize(PAYMENTS, request).token


def test_a_warm_detokenize_reaches_its_commit_without_the_database(
    vault: VaultService, engine: Engine
) -> None:
    token = vault.tokenize(PAYMENTS, TokenizeRequest(VISA, "pan_bin6_last4")).token
    revealed = None
    for _ in range(5):
        vault.detokenize_masked(PAYMENTS, token)  # warm: the bucket was read
        with _Checkouts(engine) as checkouts, never_blocking():
            try:
                pending = vault.detokenize_pending(PAYMENTS, token, masked_only=True)
            except WouldBlock:
                continue
        assert threading.get_ident() not in checkouts.threads
        pending.committed.result(10)
        revealed = pending.answer()
        break
    assert revealed is not None
    assert revealed.masked == "411111******1111"


def test_a_short_cards_start_lists_no_token_space_and_begins_on_the_loop(
    vault: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 13-digit card in pan_bin6_last4 leaves 3 free digits. Its first candidate was
    # the head of a list of the whole space (`vault.tokens.ENUMERATE_LIMIT`), 1,000
    # strings Luhn-checked and shuffled, ~3 ms of CPU (~18 ms for 14 digits in a
    # ``luhn = "pass"`` format), so such a start was moved off the loop. It is drawn now
    # (the batch review), as cheap as a 16-digit card's: begun on the loop the same way.
    listed = [0]
    real = tokens_module._enumerate

    def counted(spec: Any, pan: str) -> list[str]:
        listed[0] += 1
        return real(spec, pan)

    monkeypatch.setattr(tokens_module, "_enumerate", counted)
    short = TokenizeRequest(_card(50, length=13), "pan_bin6_last4")
    if not vault.hsm_is_local:  # a networked HSM: its tokenize never begins on the loop
        vault.tokenize(PAYMENTS, TokenizeRequest(_card(51), "pan_bin6_last4"))
        _nothing_done(engine, lambda: vault.tokenize_pending(PAYMENTS, short))
        return
    pending: Pending[Any] | None = None
    for attempt in range(5):  # the bucket's read and the key listing are fresh for 1 s
        vault.tokenize(PAYMENTS, TokenizeRequest(_card(60 + attempt), "pan_bin6_last4"))
        with never_blocking():
            try:
                pending = vault.tokenize_pending(PAYMENTS, short)
            except WouldBlock:
                continue
        break
    assert pending is not None, "a short card's tokenize never began without waiting"
    pending.committed.result(10)
    record = pending.answer()
    assert record is not None
    assert len(record.token) == 13
    assert record.token[:6] == "411111"
    assert listed == [0]
