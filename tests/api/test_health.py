"""`api.health.HealthApp` on its own: a flood of probes runs the readiness checks once
per `READY_CACHE_SECONDS`, and a probe's answer carries check names and codes, never a
check's text (review 34). The listener against idle connections is in
tests/api/test_lifecycle.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.health import READY_CACHE_SECONDS, HealthApp, build_health_server
from api.lifecycle import Readiness
from vault.errors import StorageUnavailable


class _Checks:
    def __init__(self) -> None:
        self.runs = 0
        self.failing = False

    def __call__(self) -> dict[str, str]:
        self.runs += 1
        if self.failing:
            raise StorageUnavailable("cannot reach db.internal:5432 as cofre_app")
        return {
            "database": "ok",
            "audit_witnesses": "https://witness.pci-internal:8443 lags 3s",
            # A passing check that says more than "ok" (the node's, with workers):
            # "ok" on this port, never "failing" (a drill found that, session 46).
            "workers": "2 of 2 ready",
        }


async def _probe(app: HealthApp) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/readyz"}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_a_flood_of_probes_runs_the_checks_once_per_period() -> None:
    checks, now = _Checks(), [100.0]
    app = HealthApp(checks, Readiness(), clock=lambda: now[0])

    async def flood() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(_probe(app) for _ in range(200)))

    answers = asyncio.run(flood())
    assert checks.runs == 1
    assert {status for status, _ in answers} == {200}
    now[0] += READY_CACHE_SECONDS / 2
    asyncio.run(flood())
    assert checks.runs == 1
    now[0] += READY_CACHE_SECONDS
    asyncio.run(flood())
    assert checks.runs == 2


def test_a_probe_learns_check_names_and_codes_only() -> None:
    checks, now = _Checks(), [100.0]
    app = HealthApp(checks, Readiness(), clock=lambda: now[0])
    status, body = asyncio.run(_probe(app))
    assert status == 200
    # A failing informational check is named, its text (an internal address) never shown.
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "audit_witnesses": "failing", "workers": "ok"},
        "informational_failing": ["audit_witnesses"],
    }
    checks.failing = True
    now[0] += READY_CACHE_SECONDS
    status, body = asyncio.run(_probe(app))
    assert (status, body) == (503, {"status": "unready", "code": "storage_unavailable"})


def test_the_health_listener_speaks_no_websocket() -> None:
    """Review 36: an upgrade reached the app as a websocket scope, which it never
    completes: an ERROR line per try, from anyone who can reach the port."""
    server = build_health_server(dict, Readiness(), "127.0.0.1", 1)
    assert server.config.ws == "none"
