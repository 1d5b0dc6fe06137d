"""Session 38 (rl38): a commit group run again one operation at a time (its guarded run,
after a refused charge) against another worker's group, through the bucket rows their
charges lock (PostgreSQL, two workers: two `VaultService`s on one database).

Session 37 made every charge of a group's first run just before its commit, identities
sorted (`tests/vault/test_rate37_charge_locks.py`). A group whose summed charge was
refused ran again with each operation's charge made at once, in call order: a stolen
certificate whose bucket another node had spent (admitted by this worker's early check,
refused by the charge) put two shops' calls of its group in the order of its choosing,
and that group deadlocked with any other worker's group charging the two shops, which
locks them sorted. Every call of both waited for PostgreSQL's `deadlock_timeout` before
one group ran again. Now the guarded run first locks, sorted, the rows its group's first
run charged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from hsm.provider import HSMProvider
from tests.support.groups import in_one_group
from tests.support.locks import deadlocks_seen, waiting_on_locks
from tests.support.pans import card_number
from tests.support.policies import workers_serving
from tests.vault.test_rate37_charge_locks import _outcome
from vault.pan import Pan
from vault.service import CallContext, TokenizeRequest, VaultService

_IDENTITY = """
[identities."spiffe://cofre/{name}"]
operations = ["tokenize", "metadata"]
formats = ["pan_bin6_last4"]
rate_limit = {{ per_second = 100, burst = 100 }}
"""
_POLICY = "".join(_IDENTITY.format(name=n) for n in ("thief", "ashop", "bshop"))

THIEF = CallContext("spiffe://cofre/thief", "req-thief")
ASHOP = CallContext("spiffe://cofre/ashop", "req-ashop")  # sorts before bshop
BSHOP = CallContext("spiffe://cofre/bshop", "req-bshop")

_CARDS = iter(range(200, 400))

CALLS: dict[str, Callable[[VaultService, CallContext], object]] = {
    "metadata": lambda vault, ctx: vault.token_info(ctx, "no-such-token"),
    "tokenize": lambda vault, ctx: vault.tokenize(
        ctx, TokenizeRequest(Pan(card_number("4000", next(_CARDS))), "pan_bin6_last4")
    ),
}


@pytest.fixture
def workers(engine: Engine, softhsm_provider: HSMProvider) -> Iterator[list[VaultService]]:
    yield from workers_serving(engine, softhsm_provider, _POLICY, (THIEF, ASHOP, BSHOP))


class _Hold:
    """An operation of a group that waits inside its transaction on its `run`-th run
    (1: the group's first run, 2: its guarded run) until released."""

    def __init__(self, run: int) -> None:
        self.inside, self.go, self._run, self._runs = threading.Event(), threading.Event(), run, 0

    def __call__(self, _c: Connection) -> None:
        self._runs += 1
        if self._runs == self._run:
            self.inside.set()
            assert self.go.wait(30)


def _spend(engine: Engine, identity: str) -> None:
    """Spend `identity`'s bucket as another node's calls would (committed)."""
    with engine.begin() as c:
        c.execute(
            text("UPDATE rate_state SET tat = tat + 100000 WHERE identity = :i"), {"i": identity}
        )


def _locked(engine: Engine, identity: str) -> bool:
    """Whether another transaction holds `identity`'s bucket row locked."""
    with engine.connect() as c:
        try:
            c.execute(
                text("SELECT 1 FROM rate_state WHERE identity = :i FOR UPDATE NOWAIT"),
                {"i": identity},
            )
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            return True
        finally:
            c.rollback()
    return False


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("operation", sorted(CALLS))
def test_a_refused_charges_rerun_never_deadlocks_another_workers_group(
    engine: Engine,
    workers: list[VaultService],
    operation: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 1's group: the thief's call, then bshop's, then ashop's. The thief's
    bucket is spent meanwhile, so the group's charge is refused and it runs again
    guarded; worker 2's group (ashop, bshop) charges between worker 1's two shops.
    Before: worker 1 held bshop and waited for ashop, worker 2 the reverse."""
    w1, w2 = workers
    call = CALLS[operation]
    c1, c2 = w1._committer, w2._committer
    assert c1 is not None
    assert c2 is not None
    first_run, guarded_run = _Hold(1), _Hold(2)
    with deadlocks_seen(engine, monkeypatch) as deadlocks:
        group1 = in_one_group(
            c1,
            [
                _outcome(lambda: call(w1, THIEF)),
                _outcome(lambda: c1.run(first_run)),
                _outcome(lambda: call(w1, BSHOP)),
                _outcome(lambda: c1.run(guarded_run)),
                _outcome(lambda: call(w1, ASHOP)),
            ],
        )
        try:
            assert first_run.inside.wait(30)
            _spend(engine, THIEF.identity)  # admitted early, refused at the charge
            first_run.go.set()
            assert guarded_run.inside.wait(30), "worker 1's group never ran again"
            # The rerun holds both shops' rows from its start, before ashop's call.
            assert _locked(engine, ASHOP.identity)
            assert _locked(engine, BSHOP.identity)
            group2 = in_one_group(
                c2, [_outcome(lambda: call(w2, ASHOP)), _outcome(lambda: call(w2, BSHOP))]
            )
            waiting_on_locks(engine, 1)  # worker 2's charges wait on worker 1's rows
        finally:
            first_run.go.set()
            guarded_run.go.set()
        results = [future.result(60) for future in group1 + group2]
    assert results[0].startswith("RateLimited"), results
    shops = [results[2], results[4], results[5], results[6]]
    assert len(set(shops)) == 1, results
    assert not shops[0].startswith(("RateLimited", "StorageUnavailable")), results
    assert deadlocks == []
