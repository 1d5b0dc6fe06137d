"""Session 37's rate-limit review: one stolen certificate against other identities'
calls through the bucket row its charges lock (PostgreSQL, two workers: two
`VaultService`s, each with its group committer, on one database).

Tokenize and reveal charges were summed per commit group and made just before the
commit, identities in one order (issue 21, reviews 12 and 13). Every other charging
operation (metadata, lookup, delete, update, a capture session, a relay) charged at
once: its identity's `rate_state` row stayed locked from that operation to its group's
COMMIT, with every other caller's operation of the group run meanwhile. So

- a group on the other worker (or node) with one call of the attacker waited for the
  attacker's whole group, other identities' calls in it included: the attacker sends
  one cheap call to every worker and all their groups run one at a time, each as long
  as the attacker's longest (a batch of a thousand cards);
- two groups, each with the attacker's call and a victim's at-once call in the other
  order, deadlocked, and every call of both waited for PostgreSQL's deadlock_timeout
  (a second by default) before one group ran again.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
from sqlalchemy import Connection, Engine

from hsm.provider import HSMProvider
from tests.support.fake_acquirer import FakeAcquirer
from tests.support.groups import in_one_group
from tests.support.locks import Calls, deadlocks_seen, done_or_waiting
from tests.support.pans import card_number
from tests.support.policies import workers_serving
from vault.capture import CaptureSessionRequest
from vault.errors import TokenNotFound
from vault.models import TokenUpdate
from vault.pan import Pan
from vault.service import CallContext, VaultService

_OPERATIONS = '["tokenize", "lookup", "metadata", "delete", "update", "capture", "relay"]'
_IDENTITY = """
[identities."spiffe://cofre/{name}"]
operations = {operations}
formats = ["pan_bin6_last4"]
capture_origins = ["https://shop.example"]
rate_limit = {{ per_second = 100, burst = 100 }}
"""


def _policy(acquirer: FakeAcquirer) -> str:
    """Two identities alike; their relay route `acq` to `acquirer` (a miss sends nothing)."""
    identities = "".join(
        _IDENTITY.format(name=n, operations=_OPERATIONS) for n in ("thief", "shop")
    )
    return (
        identities
        + f"""
[relay_routes.acq]
upstream = "{acquirer.url}/v1/authorize"
identities = ["spiffe://cofre/thief", "spiffe://cofre/shop"]
detokenize = ["/card/number"]
ca_bundle = "{acquirer.ca}"
timeout_seconds = 5
"""
    )


THIEF = CallContext("spiffe://cofre/thief", "req-thief")
SHOP = CallContext("spiffe://cofre/shop", "req-shop")

_SERIALS = itertools.count(100)

# Each operation that charged at once, as a call by `ctx` on `vault` (a miss where that
# is enough: a miss costs a unit as a hit does).
CALLS: dict[str, Callable[[VaultService, CallContext], object]] = {
    "metadata": lambda vault, ctx: vault.token_info(ctx, "no-such-token"),
    # A card of its own each (two inserts of one oracle-guard row wait for each other).
    "lookup": lambda vault, ctx: vault.lookup(ctx, Pan(card_number("4000", next(_SERIALS)))),
    "delete": lambda vault, ctx: vault.delete(ctx, "no-such-token"),
    "update": lambda vault, ctx: vault.update(
        ctx, "no-such-token", TokenUpdate(metadata={"order": "1"})
    ),
    "relay": lambda vault, ctx: vault.relay(ctx, "acq", {"card": {"number": "no-such-token"}}),
    "capture_session": lambda vault, ctx: vault.create_capture_session(
        ctx, CaptureSessionRequest(origin="https://shop.example", formats=("pan_bin6_last4",))
    ),
}


def _outcome(call: Callable[[], object]) -> Callable[[], str]:
    def run() -> str:
        try:
            call()
        except TokenNotFound as exc:
            return exc.code
        except Exception as exc:  # noqa: BLE001 - the test reads what failed
            return f"{type(exc).__name__}: {exc}"
        return "answered"

    return run


@pytest.fixture
def workers(
    engine: Engine, softhsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[list[VaultService]]:
    yield from workers_serving(engine, softhsm_provider, _policy(acquirer), (THIEF, SHOP))


def _held_group(
    vault: VaultService, first: Callable[[], str], *last: Callable[[], str]
) -> tuple[list[Future[str]], threading.Event]:
    """In `vault`'s committer, one group: `first`, an operation that holds the group
    inside its transaction until the returned event is set, then `last` if given;
    returns once the group is inside that operation."""
    committer, inside, go = vault._committer, threading.Event(), threading.Event()
    assert committer is not None

    def hold(_c: Connection) -> None:
        inside.set()
        go.wait(30)

    group = in_one_group(committer, [first, _outcome(lambda: committer.run(hold)), *last])
    assert inside.wait(30)
    return group, go


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("operation", sorted(CALLS))
def test_the_attackers_group_holds_no_other_workers_group(
    engine: Engine, workers: list[VaultService], operation: str
) -> None:
    """The attacker's call sits in worker 1's group, which is still running (a long
    batch); worker 2's group has a shop's call and one of the attacker's. Worker 2's
    group commits without waiting for worker 1's."""
    w1, w2 = workers
    call = CALLS[operation]
    first, release = _held_group(w1, _outcome(lambda: call(w1, THIEF)))
    try:
        assert w2._committer is not None
        second = in_one_group(
            w2._committer,
            [_outcome(lambda: call(w2, SHOP)), _outcome(lambda: call(w2, THIEF))],
        )
        calls = Calls()
        calls.start(lambda: [future.result(60) for future in second])
        # Worker 2's group waiting on a row lock while worker 1's is held is the stall
        # (bounded: fails only on a hang).
        done_or_waiting(engine, calls, 0, 1)
        assert not calls.threads[0].is_alive(), (
            f"worker 2's group waits for the attacker's {operation} bucket row"
        )
        outcomes = [future.result(1) for future in second]
    finally:
        release.set()
    assert first[0].result(60) == outcomes[1]
    assert outcomes[0] == outcomes[1], outcomes
    assert not outcomes[0].startswith(("RateLimited", "StorageUnavailable")), outcomes


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("operation", sorted(CALLS))
def test_the_attacker_and_a_victim_in_two_groups_never_deadlock(
    engine: Engine,
    workers: list[VaultService],
    operation: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 1's group: the attacker's call, then the shop's; worker 2's: the shop's,
    then the attacker's. Each group locked its first caller's bucket at once and waited
    for the other's: a deadlock on every such pair."""
    w1, w2 = workers
    call = CALLS[operation]
    with deadlocks_seen(engine, monkeypatch) as deadlocks:
        first, go1 = _held_group(
            w1, _outcome(lambda: call(w1, THIEF)), _outcome(lambda: call(w1, SHOP))
        )
        second, go2 = _held_group(
            w2, _outcome(lambda: call(w2, SHOP)), _outcome(lambda: call(w2, THIEF))
        )
        go1.set()
        go2.set()
        results = [future.result(60) for future in first + second]
    assert results[0] == results[2] == results[3] == results[5], results
    assert not results[0].startswith(("RateLimited", "StorageUnavailable")), results
    assert deadlocks == []
