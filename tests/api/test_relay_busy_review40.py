"""Review 40: a relay refused `upstream_busy` (its route's `max_in_flight` places all
held) is charged to the caller's refusal bucket (70ce60b, `api.refusals.charged`). That
bucket is the one whose debt counts every request the caller has in flight as a unit
it may yet spend (review 35), and a route is full exactly when the caller has its
places' worth of relays waiting on a stalled upstream: one busy refusal, and the
caller's next request, to a healthy route, within its rate limit, is held back 429
(review 36's regression again: "a service at 80% of its rate behind a slow upstream
got 429s it had never earned"). A stalled acquirer's route spills onto every route
and every token call of its callers, which 70ce60b says it no longer does."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_relay_answer_encoding_attacks import relay_card
from tests.support.fake_acquirer import FakeAcquirer


def _policy(acquirer: FakeAcquirer) -> str:
    ca: Path = acquirer.ca  # type: ignore[attr-defined]
    route = f"""
upstream = "{acquirer.url}/v1/authorize"
detokenize = ["/card/number"]
ca_bundle = "{ca}"
timeout_seconds = 30
"""
    return f"""
[identities."spiffe://cofre/checkout"]
description = "A second relaying service, with a small limit of its own"
scope = "out"
operations = ["relay", "detokenize_masked"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
rate_limit = {{ per_second = 2, burst = 4 }}

[relay_routes.slow]
identities = ["spiffe://cofre/checkout"]
max_in_flight = 3
{route}
[relay_routes.fast]
identities = ["spiffe://cofre/checkout"]
{route}"""


def test_a_stalled_route_does_not_hold_its_caller_back_from_a_healthy_one(
    tmp_path: Path, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    """checkout (2 relays a second, a burst of 4) has route `slow`'s 3 places waiting on
    an acquirer that stalls, and waits 2 s (its rate bucket full again). Its next relay
    to `slow` is refused 503 upstream_busy, as it should be; its relay to `fast` right
    after, within its rate limit, must be served. On 70ce60b it is held back 429
    rate_limited by the refusal guard: the busy refusal put checkout in debt, and then
    its 3 relays in flight count against it."""
    release = threading.Event()

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("hold"):
            release.wait(30)
        return 200, {"status": "APPROVED"}

    acquirer.answer = answer
    with running_vault(tmp_path, hsm_provider, extra_policy=_policy(acquirer)) as vault:
        card = relay_card(vault)
        held: list[int] = []

        def hold() -> None:
            with vault.client("checkout") as checkout:
                answer = checkout.post("/v1/relay/slow", json={"card": card, "hold": True})
                held.append(answer.status_code)

        holders = [threading.Thread(target=hold) for _ in range(3)]
        for holder in holders:
            holder.start()
        try:
            for _ in range(200):
                if len(acquirer.received) == 3:
                    break
                time.sleep(0.05)
            assert len(acquirer.received) == 3, "the holding relays never reached the acquirer"
            time.sleep(2.1)  # the three relays' rate units are back
            with vault.client("checkout") as checkout:
                busy = checkout.post("/v1/relay/slow", json={"card": card})
                fast = checkout.post("/v1/relay/fast", json={"card": card})
        finally:
            release.set()
            for holder in holders:
                holder.join(30)
    assert held == [200, 200, 200]
    assert busy.status_code == 503, busy.text
    assert busy.json()["code"] == "upstream_busy"
    assert fast.status_code == 200, (fast.status_code, fast.text)
