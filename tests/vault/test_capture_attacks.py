"""Hosted capture under attack (the capture review): a single-use session captured by
two nodes at once, and what anyone on the internet leaves behind in the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import RateLimited
from policies.loader import parse_policy
from policies.models import RateLimit
from tests.vault.test_capture import GENEROUS, POLICY, _audit, _card, _count, _session
from vault.capture import CaptureSession
from vault.errors import CaptureSessionUsed, CaptureUnauthorized
from vault.pan import Pan
from vault.service import VaultService

MASTERCARD = "5555555555554444"


@pytest.fixture
def clock() -> list[datetime]:
    return [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]


def _node(engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]) -> VaultService:
    policy = PolicyEngine(parse_policy(POLICY, kind="toml").policy)
    node = VaultService(engine, hsm_provider, policy, clock=lambda: clock[0])
    node.initialize()
    return node


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    node = _node(engine, hsm_provider, clock)
    yield node
    node.close()


@pytest.fixture
def nodes(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[tuple[VaultService, VaultService]]:
    first = _node(engine, hsm_provider, clock)
    second = _node(engine, hsm_provider, clock)
    yield first, second
    first.close()
    second.close()


def _race(nodes: tuple[VaultService, VaultService], session: CaptureSession) -> list[object]:
    """Two captures of `session`, one on each node, let go at the same instant."""
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def capture(node: VaultService, pan: str) -> None:
        card = _card(session, pan=Pan(pan))
        barrier.wait()
        try:
            outcomes.append(node.capture_card(card, per_session=GENEROUS, per_address=GENEROUS))
        except (CaptureSessionUsed, CaptureUnauthorized) as exc:
            outcomes.append(exc)

    threads = [
        threading.Thread(target=capture, args=(nodes[0], "4111111111111111")),
        threading.Thread(target=capture, args=(nodes[1], MASTERCARD)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.mark.parametrize("apart", [True, False], ids=["two-nodes", "one-node"])
def test_two_captures_of_one_single_use_session_at_once_capture_once(
    nodes: tuple[VaultService, VaultService], engine: Engine, apart: bool
) -> None:
    """Two nodes, or two threads of one node (whose commit group may take both into one
    transaction): one capture, the other refused 409."""
    pair = nodes if apart else (nodes[0], nodes[0])
    for _ in range(5):
        outcomes = _race(pair, _session(nodes[0]))
        assert len(outcomes) == 2
        refused = [o for o in outcomes if isinstance(o, CaptureSessionUsed)]
        assert len(refused) == 1, [type(o).__name__ for o in outcomes]
    # One capture per session, never two.
    captured = [e for e in _audit(engine, "capture") if e["outcome"] == "success"]
    assert len(captured) == 5


def test_the_rate_state_of_internet_addresses_and_sessions_is_purged(
    service: VaultService, engine: Engine, clock: list[datetime]
) -> None:
    """Every client address (an IPv6 /64 each) that asks the capture listener anything,
    and every session tried, was a durable `rate_state` row kept for ever: the table
    grew with every shopper and every address an attacker rotates through, and kept
    shoppers' addresses with no end. A bucket whose time has passed is a full bucket:
    the purge forgets it."""
    session = _session(service)
    for n in range(50):
        card = _card(session, secret="wrong", client_address=f"2001:db8:0:{n:x}::1")
        with pytest.raises(CaptureUnauthorized):
            service.capture_card(card, per_session=GENEROUS, per_address=GENEROUS)
    assert _count(engine, "rate_state") >= 50
    clock[0] += timedelta(hours=2)
    service.purge_expired()
    # Only the payments identity's own bucket may be left (it is the policy's).
    assert _count(engine, "rate_state") <= 1
    # A bucket still in debt is kept: forgetting it would hand out a fresh burst.
    tight = RateLimit(per_second=0.0001, burst=1)
    fresh = _session(service)
    with pytest.raises(CaptureUnauthorized):
        service.capture_card(_card(fresh, secret="wrong"), per_session=tight, per_address=GENEROUS)
    service.purge_expired()
    with pytest.raises(RateLimited):
        service.capture_card(_card(fresh, secret="wrong"), per_session=tight, per_address=GENEROUS)
