"""Review 30: a relay of a token that does not exist raised TokenNotFound inside the
reveal's transaction, which rolls its rate charge back; the API's refusal limiter does
not charge a 404 token_not_found either ("those cost a rate unit already"). So a
rate-limited service writes one audit entry per call, without limit, and probes token
existence for free."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from tests.support.fake_acquirer import FakeAcquirer
from tests.vault.conftest import oos_relay_policy, relay_vault
from vault.errors import TokenNotFound
from vault.service import CallContext, VaultService

RELAYER = CallContext("spiffe://cofre/limited-relayer", "req-review30")


@pytest.fixture
def limited_relay(
    engine: Engine, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> Iterator[VaultService]:
    policy = oos_relay_policy(
        acquirer,
        RELAYER.identity,
        operations='"relay"',
        limits="rate_limit = { per_second = 0.01, burst = 3 }",
    )
    with relay_vault(engine, hsm_provider, acquirer, policy) as svc:
        yield svc


def test_relay_misses_spend_the_rate_limit(limited_relay: VaultService, engine: Engine) -> None:
    def entries() -> int:
        with engine.connect() as c:
            return int(c.execute(sa.text("select count(*) from audit_entries")).scalar_one())

    before = entries()
    outcomes: list[str] = []
    for n in range(30):
        try:
            limited_relay.relay(RELAYER, "acq", {"card": {"number": f"tok_nope_{n}"}})
        except (TokenNotFound, RateLimited) as exc:
            outcomes.append(exc.code)
    written = entries() - before
    # A burst of 3 at 0.01/s: at most a few misses, then rate_limited.
    assert outcomes.count("token_not_found") <= 4, (outcomes, written)
