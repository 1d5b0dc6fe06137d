"""Session 38 (rl38): how long the oracle guard's rows are kept, against the policy's
window.

The purge kept every identity's rows 62 days, twice the longest window a policy may
set, whatever its guard's window: a day's guard reads two days of them, so a stolen
certificate's guesses at its full rate (and every real card a shop sent) stayed 31 times
as long as the guard could use them, and an hour's guard 744 times. Now the purge
follows each identity's guard in the policy in force (`vault.limits.guard_horizon`),
and keeps what the guard still reads (`Limits.watch`: the window under way and the one
before), one window more, and at least two days.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from hsm.provider import HSMProvider
from policies.models import OracleGuard
from tests.support.policies import clocked_vault_on
from tests.vault.test_limits import BUCKET, _refusal, _watched
from vault.errors import OracleSuspected
from vault.limits import Limits

SHOP = "spiffe://cofre/shop"
GONE = "spiffe://cofre/gone"  # no longer in the policy
_POLICY = """
[identities."spiffe://cofre/shop"]
operations = ["tokenize", "lookup"]
formats = ["pan_bin6_last4"]
oracle_guard = {{ max_pans_per_bucket = 10, window_seconds = {window} }}
"""
START = datetime(2026, 12, 3, tzinfo=UTC)  # a window's first second for each window below


def _rows_at(engine: Engine, identity: str, window: int) -> None:
    """Ten cards of `BUCKET` sent by `identity` at the first second of `START`'s window,
    recorded by the guard itself (`Limits.watch`)."""
    guard = OracleGuard(max_pans_per_bucket=10, window_seconds=window)
    sent = [(BUCKET, n) for n in range(10)]
    assert _refusal(engine, Limits(), guard, sent, START, identity=identity) is None


def _rows_of(engine: Engine, identity: str) -> int:
    with engine.connect() as c:
        found: int = c.execute(
            text("SELECT count(*) FROM oracle_watch WHERE identity = :i"), {"i": identity}
        ).scalar_one()
    return found


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("window", [3600, 86400])
def test_the_purge_keeps_guard_rows_as_long_as_the_policys_guard_reads_them(
    engine: Engine, softhsm_provider: HSMProvider, window: int
) -> None:
    """Rows of the window that began at `START`: kept while the guard reads them and
    the margin (two days past their window here: a window more for the day's guard,
    the floor for the hour's), gone once past it. An identity the policy no longer
    names keeps the longest guard's 62 days."""
    kept_for = 2 * 86400
    _rows_at(engine, SHOP, window)
    _rows_at(engine, GONE, window)
    clock = [START + timedelta(seconds=2 * window - 1)]  # still read (the window before)
    with clocked_vault_on(engine, softhsm_provider, _POLICY.format(window=window), clock) as v:
        v.purge_expired()
        assert _rows_of(engine, SHOP) == 10
        clock[0] = START + timedelta(seconds=kept_for + window - 1)  # the margin's end
        v.purge_expired()
        assert _rows_of(engine, SHOP) == 10
        clock[0] = START + timedelta(seconds=kept_for + window)
        v.purge_expired()
        assert _rows_of(engine, SHOP) == 0, "rows kept past what the policy's guard reads"
        assert _rows_of(engine, GONE) == 10
        clock[0] = START + timedelta(days=62, seconds=1)
        v.purge_expired()
        assert _rows_of(engine, GONE) == 0


@pytest.mark.parametrize("window", [60, 3600, 86400])
def test_a_purge_by_the_policy_keeps_every_card_the_guard_still_counts(
    engine: Engine, window: int
) -> None:
    """Ten cards at a window's first second; a purge by the guard at the last second of
    the next window (the ten still read); an eleventh card is still refused."""
    guard = OracleGuard(max_pans_per_bucket=10, window_seconds=window)
    limits = Limits()
    assert _watched(engine, limits, list(range(10)), START, guard) is None
    late = START + timedelta(seconds=2 * window - 1)
    with engine.begin() as c:
        limits.purge_windows(c, late, keep_seconds=0, guards={"spiffe://cofre/guessing": guard})
    assert isinstance(_watched(engine, limits, [10], late, guard), OracleSuspected)
