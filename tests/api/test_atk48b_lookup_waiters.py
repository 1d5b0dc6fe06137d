"""atk48b (session 48's attacker): one certificate's lookups held every thread of a
worker's shared pool asleep on that identity's own lookup lock, and every other
identity waited behind them.

`POST /v1/lookup` is a plain ``def`` route: it runs on the worker's shared thread pool
(anyio's, 40 threads), as do the other plain routes (`GET`, `PATCH`, `DELETE
/v1/tokens/{token}`, capture sessions, the officers' and auditors' routes) and the
guard's audit entry of every request the vault did not audit itself (a 422, a 404, a
401: `api.guard`). Since review 46b a lookup of an identity with a rate limit runs one
at a time per identity and process (`vault._early_room.EarlyRoom.one_at_a_time`, from
the read of its bucket to its charge after the commit), and the others waited for that
lock on their pool threads. A stolen `payments` certificate that kept N lookups in
flight (each a miss: one unit of its 2,000 a second) made another identity's metadata
read, and ledger's refused request, wait for N lookups one after another, while it
spent a unit per lookup's latency (the attacker measured 2.9 s behind 100 lookups of a
50 ms HMAC, a networked HSM's round trip under load).

Now at most `ONE_AT_A_TIME_MAX` lookups of one identity are held by a process, the
running one included; one more is refused at once, 429 `rate_limited` with
`Retry-After: 1` (it depends on the caller's own calls in flight only). Here the first
lookup's HMAC is held until the end, as a stalled HSM would hold it, and the others'
answers and the victims' are awaited while it is: before, the 59 other lookups never
returned and the victims waited for the pool until the HMAC let go. Real mutual TLS,
SoftHSM2, SQLite.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.pans import card_number
from vault._early_room import ONE_AT_A_TIME_MAX

IN_FLIGHT = 60  # more than the pool's 40 threads
# How long a liveness wait may last (a missing answer, not a slow one, fails the test).
PATIENCE = 60.0


def _refused_for_its_turns(answers: list[httpx.Response]) -> None:
    for answer in answers:
        assert answer.status_code == 429, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "rate_limited"
        assert answer.headers["retry-after"] == "1"


def test_one_identitys_lookups_do_not_hold_the_pool_from_other_identities(
    tmp_path: Path, hsm_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_vault(tmp_path, hsm_provider) as vault:
        with vault.client("payments") as payments:
            made = payments.post(
                "/v1/tokenize", json={"pan": card_number("454545", 48), "format": "pan_bin6_last4"}
            )
            assert made.status_code in (200, 201), made.text
            token = made.json()["token"]
        service = vault.runtime.service
        hmac = service._fingerprints
        inside, release = threading.Event(), threading.Event()

        def stalled(digits: str) -> list[bytes]:
            inside.set()
            release.wait(PATIENCE)  # a stalled HSM, until the test lets it go
            return hmac(digits)

        monkeypatch.setattr(service, "_fingerprints", stalled)
        clients = [vault.client("payments") for _ in range(IN_FLIGHT)]
        answers: list[httpx.Response] = []
        answered = threading.Condition()

        def look(client: httpx.Client, index: int) -> None:
            answer = client.post(
                "/v1/lookup", json={"pan": card_number("401200", 1000 + index)}, timeout=120
            )
            with answered:
                answers.append(answer)
                answered.notify_all()

        refused_at_once = IN_FLIGHT - ONE_AT_A_TIME_MAX
        callers = [threading.Thread(target=look, args=(c, i)) for i, c in enumerate(clients)]
        started: list[threading.Thread] = []
        try:
            for client in clients:  # handshakes first
                client.get("/healthz")
            callers[0].start()
            started.append(callers[0])
            assert inside.wait(PATIENCE), "the first lookup never reached its HMAC"
            for caller in callers[1:]:
                caller.start()
                started.append(caller)
            with answered:
                answered.wait_for(lambda: len(answers) >= refused_at_once, PATIENCE)
                early = list(answers)
            # Answered while the first lookup still holds its turn: every one past the
            # identity's turns refused at once, for its own calls in flight.
            assert len(early) == refused_at_once, (
                f"{len(early)} of {IN_FLIGHT - 1} lookups answered while one held its "
                "turn: the rest wait on pool threads"
            )
            _refused_for_its_turns(early)
            with vault.client("store") as store, vault.client("ledger") as ledger:
                read = store.get(f"/v1/tokens/{token}", timeout=PATIENCE)
                refused = ledger.post("/v1/detokenize", json={}, timeout=PATIENCE)
            assert read.status_code == 200, read.text
            assert refused.status_code == 422, refused.text
            assert not release.is_set()
        finally:
            release.set()
            for caller in started:
                caller.join(timeout=PATIENCE)
            for client in clients:
                client.close()
        # The lookups that held a turn are answered once the HSM is back.
        assert len(answers) == IN_FLIGHT
        assert [a.status_code for a in answers[refused_at_once:]] == [200] * ONE_AT_A_TIME_MAX
