"""atk48b (session 48's attacker) and its review: lookups waiting for their identity's
turn held the threads of a worker's shared pool, and every other identity waited.

`POST /v1/lookup` was a plain ``def`` route: it ran on the worker's shared thread pool
(anyio's, 40 threads), as do the other plain routes (`GET`, `PATCH`, `DELETE
/v1/tokens/{token}`, capture sessions, the officers' and auditors' routes) and the
guard's audit entry of every request the vault did not audit itself (a 422, a 404, a
401: `api.guard`). Since review 46b an identity's lookups run one at a time per process
(`vault._early_room.EarlyRoom.one_at_a_time`, from the read of its bucket to its charge
after the commit), and the others waited for that lock on their pool threads. A stolen
`payments` certificate that kept N lookups in flight (each a miss: one unit of its
2,000 a second) made another identity's metadata read, and ledger's refused request,
wait for N lookups one after another (the attacker measured 2.9 s behind 100 lookups of
a 50 ms HMAC, a networked HSM's round trip under load). A first fix capped one
identity's waiting lookups at 8; the review showed five identities' eight each filled
the pool all the same.

Now the route is ``async`` and a lookup waits for its identity's turn on the event loop
(`api.routes._offload.Turns`), where waiting holds no thread: each identity has one
lookup in a thread at most. Here the HMAC is held until the end, as a stalled HSM would
hold it, with 60 lookups of payments and 8 of each of five more identities in flight:
other identities' calls are answered while it is (before: not until it let go), and
every lookup is answered once it does. Real mutual TLS, SoftHSM2, SQLite.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.pans import card_number

LOOKERS = [f"looker-{i}" for i in range(5)]
IN_FLIGHT = {"payments": 60} | dict.fromkeys(LOOKERS, 8)  # 100 in all, the pool's 40
# How long a liveness wait may last (a missing answer, not a slow one, fails the test).
PATIENCE = 60.0
EXTRA_POLICY = "".join(
    f"""
[identities."spiffe://cofre/{name}"]
description = "atk48b: a service that looks cards up"
operations = ["tokenize", "lookup", "metadata"]
formats = ["uuid"]
rate_limit = {{ per_second = 2000, burst = 4000 }}
oracle_guard = {{ max_pans_per_bucket = 10, window_seconds = 86400 }}
"""
    for name in LOOKERS
)


def test_lookups_waiting_for_their_turn_hold_no_thread_of_the_pool(
    tmp_path: Path, hsm_provider: HSMProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_vault(tmp_path, hsm_provider, extra_policy=EXTRA_POLICY) as vault:
        for name in LOOKERS:
            issue_client(vault.pki, name)
        with vault.client("payments") as payments:
            made = payments.post(
                "/v1/tokenize", json={"pan": card_number("454545", 48), "format": "pan_bin6_last4"}
            )
            assert made.status_code in (200, 201), made.text
            token = made.json()["token"]
        service = vault.runtime.service
        hmac = service._fingerprints
        release = threading.Event()
        inside = threading.Semaphore(0)

        def stalled(digits: str) -> list[bytes]:
            inside.release()
            release.wait(PATIENCE)  # a stalled HSM, until the test lets it go
            return hmac(digits)

        monkeypatch.setattr(service, "_fingerprints", stalled)
        clients = [
            (vault.client(name), serial)
            for name, count in IN_FLIGHT.items()
            for serial in range(count)
        ]
        answers: list[int] = []

        def look(client: httpx.Client, serial: int) -> None:
            pan = card_number("401200", 1000 + serial)  # under each guard's limit of 10
            answers.append(client.post("/v1/lookup", json={"pan": pan}, timeout=120).status_code)

        callers = [threading.Thread(target=look, args=item) for item in clients]
        try:
            for client, _serial in clients:  # handshakes first
                client.get("/healthz")
            for caller in callers:
                caller.start()
            for name in IN_FLIGHT:  # each identity's first lookup holds its HMAC
                assert inside.acquire(timeout=PATIENCE), f"no lookup of {name} reached its HMAC"
            with vault.client("store") as store, vault.client("ledger") as ledger:
                read = store.get(f"/v1/tokens/{token}", timeout=PATIENCE)
                refused = ledger.post("/v1/detokenize", json={}, timeout=PATIENCE)
            assert not release.is_set()
            assert read.status_code == 200, read.text
            assert refused.status_code == 422, refused.text
            assert answers == [], "a lookup was answered while its HMAC was held"
        finally:
            release.set()
            for caller in callers:
                caller.join(timeout=PATIENCE)
            for client, _serial in clients:
                client.close()
        assert answers.count(200) == sum(IN_FLIGHT.values()), answers
