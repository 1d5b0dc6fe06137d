"""Review 12's attacks on the reveals' charges (issue 21, session 12): a reveal's rate
charge joins its commit group's sum, made just before the commit, and a spent quota is
refused before the committer. Neither may refuse what the charges would allow, nor lock
an identity's rows in another order than every other path does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from tests.support.groups import in_one_group
from tests.support.locks import deadlocks_seen
from tests.support.policies import vault_on
from vault.errors import BatchItemInvalid, QuotaExceeded, TokenNotFound
from vault.service import CallContext, VaultService
from vault.storage.schema import usage_counters

POLICY = """
[identities."spiffe://cofre/ledger"]
operations = ["detokenize", "detokenize_masked"]
reveal = "masked"
rate_limit = { per_second = 0.001, burst = 4 }
quota = { detokenize_per_day = 4 }

[identities."spiffe://cofre/reader"]
operations = ["detokenize", "detokenize_masked"]
reveal = "masked"
rate_limit = { per_second = 100, burst = 100 }
quota = { detokenize_per_day = 1000 }
"""
LEDGER = CallContext("spiffe://cofre/ledger", "req-l")
READER = CallContext("spiffe://cofre/reader", "req-r")


def _vault(engine: Engine, hsm: HSMProvider) -> VaultService:
    return vault_on(engine, hsm, POLICY)


@pytest.fixture
def vault(engine: Engine, hsm_provider: HSMProvider) -> Iterator[VaultService]:
    service = _vault(engine, hsm_provider)
    yield service
    service.close()


@pytest.fixture
def deadlocks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    with deadlocks_seen(engine, monkeypatch) as seen:
        yield seen


def _code(call: Callable[[], object]) -> str:
    try:
        call()
    except (TokenNotFound, BatchItemInvalid, RateLimited, QuotaExceeded) as exc:
        return exc.code
    return "answered"


def _quietly(call: Callable[[], object]) -> Callable[[], str]:
    def run() -> str:
        try:
            return _code(call)
        except Exception as exc:  # noqa: BLE001 - the operation the test makes fail
            return type(exc).__name__

    return run


def test_a_rolled_back_quota_count_never_refuses_the_rest_of_the_day(
    vault: VaultService, engine: Engine
) -> None:
    """In a commit group's first run a refusal's read of the day's count can hold other
    calls' charges that the group's rollback undoes. Remembered there, it refused this
    identity's detokenize calls until midnight with half its quota left."""
    assert vault._committer is not None
    # One rate unit spent without quota (a masked reveal): room 3 of 4.
    assert _code(lambda: vault.detokenize_masked(LEDGER, "nope")) == "token_not_found"
    calls = [
        lambda: _code(lambda: vault.detokenize(LEDGER, "c")),  # rate 1, quota 1
        lambda: _code(lambda: vault.detokenize_batch(LEDGER, ["a1", "a2", "a3"])),  # 3, 3
        lambda: _code(lambda: vault.detokenize(LEDGER, "b")),  # rate 1, quota 1
    ]
    codes = [future.result(30) for future in in_one_group(vault._committer, calls)]
    assert codes == ["token_not_found", "rate_limited", "token_not_found"]
    with engine.connect() as connection:
        assert connection.execute(select(usage_counters.c.count)).scalar() == 2
    # 1 rate unit and 2 quota units left: the charges allow this call.
    assert _code(lambda: vault.detokenize(LEDGER, "d")) == "token_not_found"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_reveal_charges_lock_the_bucket_before_the_quota_on_every_path(
    engine: Engine, hsm_provider: HSMProvider, deadlocks: list[str]
) -> None:
    """A deferred rate charge with an immediate quota charge locked the identity's
    `usage_counters` row at its statement and its `rate_state` row just before COMMIT;
    a group's rerun (and relay) lock them the other way round. Two workers, one in
    each, deadlocked until PostgreSQL's deadlock_timeout broke it."""
    w1, w2 = _vault(engine, hsm_provider), _vault(engine, hsm_provider)
    try:
        assert _code(lambda: w1.detokenize(READER, "x")) == "token_not_found"  # rows exist
        assert w1._committer is not None
        assert w2._committer is not None
        c1, c2 = w1._committer, w2._committer
        inside, go = threading.Event(), threading.Event()

        def blocker(_c: Connection) -> None:
            inside.set()
            go.wait(10)

        def raiser(_c: Connection) -> None:
            raise RuntimeError("one operation of the group fails: it runs again guarded")

        first = in_one_group(
            c1, [_quietly(lambda: w1.detokenize(READER, "a")), _quietly(lambda: c1.run(blocker))]
        )
        assert inside.wait(10)  # w1's group is inside, between its charges
        second = in_one_group(
            c2, [_quietly(lambda: c2.run(raiser)), _quietly(lambda: w2.detokenize(READER, "b"))]
        )
        time.sleep(0.5)  # w2's rerun meets w1's locks
        go.set()
        results = [future.result(30) for future in first + second]
        assert results[0] == "token_not_found"
        assert results[3] == "token_not_found"
        assert deadlocks == []
    finally:
        w1.close()
        w2.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_full_reveal_and_a_masked_one_of_two_identities_never_deadlock(
    engine: Engine, hsm_provider: HSMProvider, deadlocks: list[str]
) -> None:
    """Review 13: with a quota reveal's rate charged at once (its bucket row locked at
    the statement) and a masked reveal's deferred (locked just before COMMIT), worker
    1's group [full reveal by A, masked by B] and worker 2's [full by B, masked by A]
    each held one bucket row and waited for the other's. Both deferred, the group locks
    identities in one order, each bucket then its quota."""
    w1, w2 = _vault(engine, hsm_provider), _vault(engine, hsm_provider)
    try:
        for ctx in (LEDGER, READER):  # the rows exist
            assert _code(lambda ctx=ctx: w1.detokenize(ctx, "x")) == "token_not_found"
        go = threading.Event()

        def held_group(
            vault: VaultService, full: CallContext, masked: CallContext, token: str
        ) -> list[Any]:
            """In `vault`'s committer, one group: a full reveal by `full`, an operation
            that holds the group inside its transaction, a masked reveal by `masked`."""
            committer, inside = vault._committer, threading.Event()
            assert committer is not None

            def block(_c: Connection) -> None:
                inside.set()
                go.wait(10)

            group = in_one_group(
                committer,
                [
                    _quietly(lambda: vault.detokenize(full, token)),
                    _quietly(lambda: committer.run(block)),
                    _quietly(lambda: vault.detokenize_masked(masked, token)),
                ],
            )
            assert inside.wait(10)
            return group

        first = held_group(w1, LEDGER, READER, "a")
        second = held_group(w2, READER, LEDGER, "c")
        go.set()
        results = [future.result(30) for future in first + second]
        assert [results[i] for i in (0, 2, 3, 5)] == ["token_not_found"] * 4
        assert deadlocks == []
    finally:
        w1.close()
        w2.close()
