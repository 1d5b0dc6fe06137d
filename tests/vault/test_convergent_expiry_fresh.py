"""Review 28, R28-2: items of one call (a batch, or single calls merged in one commit
group) that converge on a token made in that same call.

6e891dd made a hit on a *stored* token live at least as long as the call asks. An item
answered with the token an earlier item of the same call creates got that item's life:
a batch ``[card ttl 60, card for good]`` handed the second item a token the purge shreds
a minute later. Now a new token lives as long as the longest life any item converging on
it asks (no ``ttl_seconds`` wins), and so does a stored one; the entry of the item whose
ask extended it says until when (``details.expires_at``), as a single call's does. An
idempotent retry in the same call (the same key) changes nothing, as alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from audit.log import request_trail
from tests.support.groups import in_one_group
from tests.vault.conftest import GETNET, PAYMENTS
from tests.vault.test_convergent_expiry import _stored_expiry
from vault.models import CallContext, TokenRecord
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

VISA = Pan("4111111111111111")
MC = Pan("5555555555554444")
FORMAT = "pan_bin6_last4"


@pytest.fixture
def now(service: VaultService) -> list[datetime]:
    clock = [datetime.now(UTC).replace(microsecond=0)]
    service._clock = lambda: clock[0]  # type: ignore[method-assign]
    return clock


def _entries(engine: Engine, ids: list[int]) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id IN :ids ORDER BY id").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        )
        return [json.loads(payload) for (payload,) in rows]


def _kept_past_the_purge(service: VaultService, now: list[datetime], token: str, pan: Pan) -> None:
    now[0] += timedelta(seconds=3_700)
    service.purge_expired()
    assert service.detokenize(GETNET, token).pan == pan


def test_a_batch_gives_a_new_token_the_longest_life_its_items_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    items = [
        TokenizeRequest(VISA, FORMAT, ttl_seconds=60),
        TokenizeRequest(VISA, FORMAT),
        TokenizeRequest(VISA, FORMAT, ttl_seconds=120),
    ]
    with request_trail() as trail:
        answers = service.tokenize_batch(PAYMENTS, items)
    assert len({a.token for a in answers}) == 1
    assert [a.expires_at for a in answers] == [None, None, None]
    assert [a.existing for a in answers] == [False, True, True]
    assert _stored_expiry(engine, answers[0].token) is None
    entries = _entries(engine, trail)
    assert [e["details"]["result"] for e in entries] == ["new", "convergent", "convergent"]
    # The item that asked for good extended it, and its entry says so.
    assert [e["details"].get("expires_at") for e in entries] == [None, "never", None]
    _kept_past_the_purge(service, now, answers[0].token, VISA)


def test_a_batch_never_shortens_a_new_token_below_its_first_items_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    items = [
        TokenizeRequest(MC, FORMAT, ttl_seconds=3_600),
        TokenizeRequest(MC, FORMAT, ttl_seconds=5),
    ]
    answers = service.tokenize_batch(PAYMENTS, items)
    hour = now[0] + timedelta(seconds=3_600)
    assert [a.expires_at for a in answers] == [hour, hour]
    assert _stored_expiry(engine, answers[0].token) == hour


def test_a_keyed_batch_gives_a_new_token_the_longest_life_its_items_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    items = [
        TokenizeRequest(VISA, FORMAT, ttl_seconds=60, idempotency_key="short"),
        TokenizeRequest(VISA, FORMAT, idempotency_key="kept"),
    ]
    answers = service.tokenize_batch(PAYMENTS, items)
    assert answers[0].token == answers[1].token
    assert [a.expires_at for a in answers] == [None, None]
    assert _stored_expiry(engine, answers[0].token) is None
    again = service.tokenize(PAYMENTS, TokenizeRequest(VISA, FORMAT, idempotency_key="kept"))
    assert (again.token, again.expires_at) == (answers[0].token, None)
    _kept_past_the_purge(service, now, answers[0].token, VISA)


def test_a_key_repeated_after_a_hit_extends_the_stored_token_to_its_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    """The card's stored token expires in a minute; the first item (key K) is answered
    by convergence and extends it to an hour, the second (K again, for good) is answered
    by convergence too (K is stored nowhere, as alone): it must not get the hour."""
    stored = service.tokenize(PAYMENTS, TokenizeRequest(MC, FORMAT, ttl_seconds=60))
    items = [
        TokenizeRequest(MC, FORMAT, ttl_seconds=3_600, idempotency_key="K"),
        TokenizeRequest(MC, FORMAT, idempotency_key="K"),
    ]
    with request_trail() as trail:
        answers = service.tokenize_batch(PAYMENTS, items)
    assert [a.token for a in answers] == [stored.token, stored.token]
    assert [a.expires_at for a in answers] == [None, None]
    assert _stored_expiry(engine, stored.token) is None
    entries = _entries(engine, trail)
    assert [e["details"].get("expires_at") for e in entries] == [None, "never"]
    _kept_past_the_purge(service, now, stored.token, MC)


def test_an_idempotent_retry_in_a_batch_changes_no_life(
    service: VaultService, now: list[datetime]
) -> None:
    """The same key twice is a retry of the first item, answered as it was (a retry
    alone does not extend either)."""
    items = [
        TokenizeRequest(VISA, FORMAT, ttl_seconds=60, idempotency_key="once"),
        TokenizeRequest(VISA, FORMAT, idempotency_key="once"),
    ]
    answers = service.tokenize_batch(PAYMENTS, items)
    minute = now[0] + timedelta(seconds=60)
    assert [a.expires_at for a in answers] == [minute, minute]


def test_single_calls_in_one_commit_group_give_a_new_token_the_longest_ask(
    service: VaultService, engine: Engine, now: list[datetime]
) -> None:
    assert service._committer is not None
    inserts: list[int] = []

    def call(request: TokenizeRequest) -> Callable[[], tuple[TokenRecord, list[int]]]:
        def run() -> tuple[TokenRecord, list[int]]:
            with request_trail() as trail:
                record = service.tokenize(CallContext(PAYMENTS.identity, "rid"), request)
            return record, trail

        return run

    calls = [call(TokenizeRequest(MC, FORMAT, ttl_seconds=60)), call(TokenizeRequest(MC, FORMAT))]
    (first, _), (second, trail) = [f.result(30) for f in in_one_group(service._committer, calls)]
    with engine.connect() as c:
        inserts.append(c.execute(sa.text("SELECT count(*) FROM tokens")).scalar_one())
    assert inserts == [1]  # one token: the calls ran as one batch
    assert (second.token, second.existing) == (first.token, True)
    assert second.expires_at is None
    assert _stored_expiry(engine, first.token) is None
    (entry,) = _entries(engine, trail)
    assert entry["details"]["expires_at"] == "never"
    _kept_past_the_purge(service, now, first.token, MC)
