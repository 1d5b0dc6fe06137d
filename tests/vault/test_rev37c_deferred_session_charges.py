"""Review of session 37's deferred charges (rev37c): a capture session's wrong-secret
charges made in one commit group, deferred to its end and summed, still count when the
answer is a refusal, and a refused sum costs no other caller of the group its answer
(real PostgreSQL, the vault's own group committer, the real SoftHSM token).

`_refuse_a_wrong_secret` (session 48: `_charge_session` before the listener's bound
covered wrong secrets, atk48c) charges the wrong-secret bucket in a transaction of its
own, then raises `CaptureUnauthorized`: the charge must be committed by then. Since session 37 the
charge waits for the group's end; five guesses in one group against a burst of three
are refused there as a sum, the group runs again one call at a time, and exactly three
are answered 401 (charged) and two 429, as one call at a time always did. Held at
review: every test here passed before and after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from hsm.provider import HSMProvider
from policies.errors import RateLimited
from policies.models import RateLimit
from tests.support.groups import in_one_group
from tests.support.policies import clocked_vault_on
from tests.vault.test_cap37_capture_sessions import POLICY_TWO_SHOPS, TIGHT
from tests.vault.test_capture import _card, _session, clock
from vault.capture import CardCapture
from vault.errors import CaptureUnauthorized
from vault.service import VaultService

__all__ = ["clock"]  # the fixture, imported for the tests here


@pytest.fixture
def service(
    engine: Engine, hsm_provider: HSMProvider, clock: list[datetime]
) -> Iterator[VaultService]:
    with clocked_vault_on(engine, hsm_provider, POLICY_TWO_SHOPS, clock) as svc:
        yield svc


def _charge_session(service: VaultService, card: CardCapture, row: Any, limit: RateLimit) -> None:
    """What `capture_card` charges once the session is known: the wrong-secret bucket
    (and the refusal) for a wrong secret, else the holder's bucket."""
    service._refuse_a_wrong_secret(card, row, limit)
    service.charge_rate(f"capture-holder {row.id}", limit)


def _outcome(call: Callable[[], object]) -> Callable[[], str]:
    def run() -> str:
        try:
            call()
        except (CaptureUnauthorized, RateLimited) as exc:
            return type(exc).__name__
        return "answered"

    return run


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_wrong_secrets_in_one_group_are_charged_before_their_refusal(
    service: VaultService,
) -> None:
    session = _session(service)
    row = service._session_row(session.session_id)
    assert row is not None
    assert service._committer is not None
    guesses = [
        _outcome(
            lambda n=n: _charge_session(
                service, _card(session, secret=f"cofre_cs_guess{n}"), row, TIGHT
            )
        )
        for n in range(5)
    ]
    # Another caller's charge in the same group (the session's holder, another bucket).
    holder = _outcome(lambda: _charge_session(service, _card(session), row, TIGHT))
    futures = in_one_group(service._committer, [*guesses[:3], holder, *guesses[3:]])
    outcomes = [f.result(30) for f in futures]
    assert outcomes[3] == "answered"
    guessed = outcomes[:3] + outcomes[4:]
    assert sorted(guessed) == ["CaptureUnauthorized"] * 3 + ["RateLimited"] * 2
    # The three 401s were charged: the next guess, alone, is 429 at once.
    with pytest.raises(RateLimited):
        _charge_session(service, _card(session, secret="cofre_cs_guess9"), row, TIGHT)
    # ... and the holder's bucket is its own: two more tries of the right secret pass.
    for _ in range(2):
        _charge_session(service, _card(session), row, TIGHT)
