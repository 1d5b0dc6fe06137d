"""Drill 36: nodes whose wall clocks disagree, on the shared rate buckets (the system
clock cannot be stepped here, so each node's clock is the `now` it charges with, on the
real databases). A bucket's state is a wall-clock time (`vault.limits`), shared by every
node: a node behind the others by more than a bucket's burst time (`burst /
per_second`) finds every identity another node charged lately already over its limit,
and answers `429 rate_limited` until its clock is put right, however little the
identity sent; within that time nothing shows. docs/operations.md, "Failure
behaviour", says so and what to do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.databases import migrated_engine
from vault.limits import Limits

NOW = 2_000_000_000.0
# The dev policy's services: 2,000 a second, bursts of 4,000: a burst time of 2 s.
LIMIT = RateLimit(per_second=2000, burst=4000)
BURST_SECONDS = LIMIT.burst / LIMIT.per_second


@pytest.fixture
def engine(migrated_database: None, database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url) as engine:
        yield engine


def _charge(engine: Engine, identity: str, now: float) -> None:
    with engine.begin() as connection:
        Limits().charge_rate(connection, identity, LIMIT, 1, now)


def test_a_node_behind_by_less_than_the_burst_time_is_not_seen(engine: Engine) -> None:
    _charge(engine, "spiffe://cofre/payments", NOW)  # a node on time
    _charge(engine, "spiffe://cofre/payments", NOW - BURST_SECONDS / 2)  # one behind


def test_a_node_behind_by_more_refuses_what_another_node_charged(engine: Engine) -> None:
    skew = 60.0
    _charge(engine, "spiffe://cofre/payments", NOW)  # one call on a node on time
    with pytest.raises(RateLimited) as refused:
        _charge(engine, "spiffe://cofre/payments", NOW - skew)
    # The wait it asks for is the skew, less the burst time: the clock's error, not the
    # identity's traffic.
    assert refused.value.retry_after == pytest.approx(skew - BURST_SECONDS, abs=0.01)
    # The node on time is not affected; an identity no node charged is not either.
    _charge(engine, "spiffe://cofre/payments", NOW + 0.01)
    _charge(engine, "spiffe://cofre/ledger", NOW - skew)
