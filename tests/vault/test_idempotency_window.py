"""Idempotency keys are remembered for a window (`COFRE_TOKENS__IDEMPOTENCY_KEY_TTL_HOURS`,
24 h by default), then forgotten: the purge removes their records in bounded batches and
lookups ignore older ones, so one card sent with N keys no longer grows
``idempotency_keys`` for ever (review 27's strict xfail).

The attacker holds one stolen client certificate that may tokenize. Within the window
nothing changes: a retry gets its answer (single call or batch), another card is 409 and
cannot take the key. After it, a key answered by convergence is a new key (as at Stripe
and Basis Theory), while a key that made its token is still answered from that token's
row, for ever, as before. Real SoftHSM2 token (and the CloudHSM shim), SQLite and
PostgreSQL (the `service` / `engine` fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.loader import parse_policy
from tests.support.groups import one_answered_one_409_in_one_group
from tests.support.pans import card_number
from tests.support.policies import vault_on
from tests.vault.conftest import PAYMENTS, TEST_POLICY
from tests.vault.test_idempotency_after_domain_change import MOVED
from tests.vault.test_rev27_idem import POLICY, SHOP_B
from vault.errors import IdempotencyConflict, TokenDeleted
from vault.pan import Pan
from vault.service import TokenizeRequest, VaultService

CONVERGENT = "pan_bin6_last4"
RANDOM = "card_random"  # `dedup = "random"`: every call without a key makes a new token
WINDOW = timedelta(hours=24)  # the default


def _request(card: str, key: str | None, token_format: str = CONVERGENT) -> TokenizeRequest:
    return TokenizeRequest(pan=Pan(card), format=token_format, idempotency_key=key)


def _records(engine: Engine, like: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM idempotency_keys WHERE idempotency_key LIKE :k"),
                {"k": like},
            ).scalar_one()
        )


def _at(monkeypatch: pytest.MonkeyPatch, service: VaultService, later: timedelta) -> None:
    moment = datetime.now(UTC) + later
    monkeypatch.setattr(service, "_clock", lambda: moment)


def _converged(service: VaultService, serial: int, key: str) -> tuple[str, str]:
    """The card's token, then `key` answered by convergence (recorded in the table alone)."""
    held = card_number("400000", serial)
    token = service.tokenize(PAYMENTS, _request(held, None)).token
    assert service.tokenize(PAYMENTS, _request(held, key)).token == token
    return token, held


# ------------------------------------------------------------------- within the window


def test_within_the_window_a_retry_is_answered_and_another_card_is_409_after_a_purge(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day less a minute later, with the purge run: the record is kept, the retry (one
    call and in a batch) is answered the token, another card is 409 (one call and in a
    batch: the key cannot be reclaimed)."""
    token, held = _converged(service, 886_101, "win-keep")
    other = card_number("400000", 886_102)
    _at(monkeypatch, service, WINDOW - timedelta(minutes=1))
    service.purge_expired()
    assert _records(engine, "win-keep") == 1
    assert service.tokenize(PAYMENTS, _request(held, "win-keep")).token == token
    assert service.tokenize_batch(PAYMENTS, [_request(held, "win-keep")])[0].token == token
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(other, "win-keep"))
    with pytest.raises(Exception, match="another PAN"):
        service.tokenize_batch(PAYMENTS, [_request(other, "win-keep")])


# -------------------------------------------------------------------- after the window


@pytest.mark.parametrize("purged", [True, False], ids=["purged", "not-purged"])
def test_after_the_window_a_converged_key_is_a_new_key_whether_or_not_the_purge_ran(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch, purged: bool
) -> None:
    """Lookups ignore a record older than the window, so the answer does not depend on
    when the purge ran: the same card converges again on its token (the same answer),
    another card's call with the key is answered its own token and recorded (no 409, and
    no 500 from the stale record's primary key)."""
    token, held = _converged(service, 886_201, "win-late")
    other = card_number("400000", 886_202)
    _at(monkeypatch, service, WINDOW + timedelta(minutes=1))
    if purged:
        service.purge_expired()
        assert _records(engine, "win-late") == 0
    assert service.tokenize(PAYMENTS, _request(held, "win-late")).token == token
    _at(monkeypatch, service, 2 * WINDOW + timedelta(minutes=2))
    theirs = service.tokenize(PAYMENTS, _request(other, "win-late"))
    assert theirs.token != token
    assert _records(engine, "win-late") == 1
    # Recorded anew: within its own window the key is the other card's.
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(held, "win-late"))


def test_after_the_window_a_batch_records_a_forgotten_key_again(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, held = _converged(service, 886_301, "win-batch")
    other = card_number("400000", 886_302)
    _at(monkeypatch, service, WINDOW + timedelta(minutes=1))
    answered = service.tokenize_batch(
        PAYMENTS, [_request(other, "win-batch"), _request(held, "win-batch-2")]
    )
    assert answered[1].token == token
    assert _records(engine, "win-batch%") == 2


def test_a_converged_key_of_a_deleted_token_is_410_within_the_window_and_new_after(
    service: VaultService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the window the retry learns its token is gone (410); after it the key is
    forgotten and the card gets a new token like any call with a new key."""
    token, held = _converged(service, 886_401, "win-gone")
    assert service.delete(PAYMENTS, token)
    _at(monkeypatch, service, WINDOW - timedelta(minutes=1))
    with pytest.raises(TokenDeleted):
        service.tokenize(PAYMENTS, _request(held, "win-gone"))
    _at(monkeypatch, service, WINDOW + timedelta(minutes=1))
    fresh = service.tokenize(PAYMENTS, _request(held, "win-gone"))
    assert fresh.token != token
    assert not fresh.existing


@pytest.mark.parametrize("token_format", [RANDOM, CONVERGENT])
def test_a_key_that_made_its_token_is_answered_for_ever_from_the_token_row(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch, token_format: str
) -> None:
    """The key a token row carries (every node writes it there, as before 0018) outlives
    its record: a late retry in a random-token domain gets its token, never a second one
    for the card, and another card is still 409."""
    held = card_number("400000", 886_501)
    made = service.tokenize(PAYMENTS, _request(held, "win-made", token_format))
    _at(monkeypatch, service, 3 * WINDOW)
    service.purge_expired()
    assert _records(engine, "win-made") == 0
    again = service.tokenize(PAYMENTS, _request(held, "win-made", token_format))
    assert (again.token, again.existing) == (made.token, True)
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(card_number("400000", 886_502), "win-made"))


# ------------------------------------------------------------------------------ the purge


def test_the_purge_forgets_old_records_in_bounded_batches_and_keeps_the_young(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One card sent with 45 keys, then 5 more a day later: at the next purge (batches
    of 20) the 45 go, in statements deleting at most 20 rows each, and the 5 stay."""
    held = card_number("400000", 886_601)
    service.tokenize(PAYMENTS, _request(held, None))
    for n in range(45):
        service.tokenize(PAYMENTS, _request(held, f"win-flood-{n:02}"))
    _at(monkeypatch, service, WINDOW - timedelta(hours=1))
    for n in range(5):
        service.tokenize(PAYMENTS, _request(held, f"win-young-{n}"))
    _at(monkeypatch, service, WINDOW + timedelta(minutes=1))
    deleted: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM IDEMPOTENCY_KEYS"):
            deleted.append(cursor.rowcount)

    event.listen(engine, "after_cursor_execute", count)
    try:
        service.purge_expired(batch=20)
    finally:
        event.remove(engine, "after_cursor_execute", count)
    assert _records(engine, "win-flood-%") == 0
    assert _records(engine, "win-young-%") == 5
    assert sum(deleted) == 45
    assert max(deleted) <= 20, deleted


@pytest.fixture
def hourly(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    service = VaultService(
        engine,
        hsm_provider,
        PolicyEngine(parse_policy(TEST_POLICY, kind="toml").policy),
        idempotency_window=timedelta(hours=1),
    )
    service.initialize()
    yield service
    service.close()


def test_the_window_is_the_setting_s(
    hourly: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _converged(hourly, 886_701, "win-hour")
    _at(monkeypatch, hourly, timedelta(minutes=59))
    hourly.purge_expired()
    assert _records(engine, "win-hour") == 1
    _at(monkeypatch, hourly, timedelta(minutes=61))
    hourly.purge_expired()
    assert _records(engine, "win-hour") == 0
    other = card_number("400000", 886_702)
    assert hourly.tokenize(PAYMENTS, _request(other, "win-hour")).token


def test_a_stale_record_in_the_caller_s_old_domain_neither_refuses_nor_fails(
    service: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy moved payments to another domain: within the window its key recorded in
    the old domain is 409 there (as before); after it the key is recorded in the new
    domain (the old record, which the owner's unique index still held, is removed
    first: no 500)."""
    token, held = _converged(service, 886_801, "win-moved")
    service.replace_policy(
        PolicyEngine(parse_policy(MOVED, kind="toml").policy), actor="ops", source="test"
    )
    with pytest.raises(IdempotencyConflict):
        service.tokenize(PAYMENTS, _request(held, "win-moved"))
    _at(monkeypatch, service, WINDOW + timedelta(minutes=1))
    moved = service.tokenize(PAYMENTS, _request(held, "win-moved"))
    assert moved.token != token  # a new domain: an unrelated token
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT domain FROM idempotency_keys WHERE idempotency_key = 'win-moved'")
        ).all()
    assert [domain for (domain,) in rows] == ["spiffe://cofre/shop"]


@pytest.fixture
def shared(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    """Payments and shop-b in one domain (review 27's policy)."""
    service = vault_on(engine, hsm_provider, POLICY)
    yield service
    service.close()


def test_two_identities_reclaiming_one_stale_key_in_one_commit_group_meet(
    shared: VaultService, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the window, payments and shop-b send the forgotten key with two cards in one
    commit group: both remove the stale record, one records the key, the other meets it
    (its transaction runs again and finds it): one answered, one 409, one record."""
    assert shared._committer is not None
    _, held = _converged(shared, 886_901, "win-race")
    other = card_number("400000", 886_902)
    _at(monkeypatch, shared, WINDOW + timedelta(minutes=1))
    one_answered_one_409_in_one_group(
        shared, [(PAYMENTS, _request(held, "win-race")), (SHOP_B, _request(other, "win-race"))]
    )
    assert _records(engine, "win-race") == 1
