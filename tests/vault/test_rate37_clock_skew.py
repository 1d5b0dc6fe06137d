"""Session 37: how much a node's wrong wall clock gives one stolen certificate, on the
shared buckets (each node's clock is the `now` it charges with, on the real databases;
`tests/vault/test_ops36_clock_skew.py` drills the refusals it causes).

Measured: a node whose clock is ahead grants the identity one burst more, once (the
bucket looks full to it); from then the bucket's time is the ahead node's, so every
other node refuses the identity until its clock catches up, and the ahead node grants
at the policy's rate. A node behind grants nothing more. No skew multiplies the rate:
the limit is exceeded by at most one burst per forward step of a node's clock."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from policies.errors import RateLimited
from policies.models import RateLimit
from vault.limits import Limits

NOW = 2_000_000_000.0
LIMIT = RateLimit(per_second=1, burst=10)
THIEF = "spiffe://cofre/store"


def _granted(engine: Engine, now: float, calls: int) -> int:
    """How many of `calls` single charges at `now` the bucket grants."""
    granted = 0
    for _ in range(calls):
        try:
            with engine.begin() as connection:
                Limits().charge_rate(connection, THIEF, LIMIT, 1, now)
        except RateLimited:
            continue
        granted += 1
    return granted


@pytest.mark.parametrize("skew", [5.0, 60.0, 86400.0])
def test_a_node_ahead_grants_one_burst_more_once_and_no_more(engine: Engine, skew: float) -> None:
    assert _granted(engine, NOW, 20) == LIMIT.burst  # the node on time: its burst
    assert _granted(engine, NOW + skew, 20) == min(LIMIT.burst, int(skew))  # ahead
    # Then every node on time refuses, however long it waits short of the skew...
    assert _granted(engine, NOW + skew - 1, 20) == 0
    # ...and the ahead node grants the rate, as the bucket's own clock.
    assert _granted(engine, NOW + skew + 3, 20) == 3


def test_a_node_behind_grants_nothing_more(engine: Engine) -> None:
    assert _granted(engine, NOW, 20) == LIMIT.burst
    for behind in (5.0, 60.0, 86400.0):
        assert _granted(engine, NOW - behind, 20) == 0
