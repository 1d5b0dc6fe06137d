"""Review 30: refusals the vault's capture operation audits itself (an unknown session
or wrong secret, 401 capture_unauthorized; the per-address 429) left a trail, so the
capture guard never charged the listener-wide bucket for them: many addresses (an IPv6
/48 holds 65,536 /64s) each got their own burst of audited refusals, with no
listener-wide bound (80 addresses x 5 gave 400 entries against a bound of 236). They
now spend it, and past it the operation leaves them to the guard's count."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx

from api.capture import LISTENER_REFUSALS
from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_refusal_attacks import _accounted, _allowed, _entries
from tests.support.postgres import free_port
from vault.operations.capture import ANONYMOUS_CAPTURE

SESSION = "cs_" + "a" * 32


def test_many_addresses_posting_to_unknown_sessions_are_bounded_listener_wide(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    capture = CaptureSettings(port=free_port(), address_per_second=0.5, address_burst=5)
    addresses, per_address = 80, 5
    with running_vault(tmp_path, hsm_provider, capture=capture) as vault:
        before = len(_entries(vault, ANONYMOUS_CAPTURE))
        context = ssl.create_default_context(cafile=str(vault.pki.ca))
        started = time.monotonic()
        statuses: list[int] = []
        for a in range(addresses):
            transport = httpx.HTTPTransport(verify=context, local_address=f"127.0.2.{a + 2}")
            with httpx.Client(
                base_url=str(vault.capture_url), transport=transport, timeout=10
            ) as client:
                statuses += [
                    client.post(
                        f"/v1/capture/{SESSION}",
                        json={"secret": f"guess-{i}", "number": "4111111111111111"},
                    ).status_code
                    for i in range(per_address)
                ]
        elapsed = time.monotonic() - started
        written = [
            e
            for e in _entries(vault, ANONYMOUS_CAPTURE)[before:]
            if not e["action"].endswith("requests_refused")
        ]
    wide = LISTENER_REFUSALS
    assert len(written) <= _allowed(wide.per_second, wide.burst, elapsed), len(written)
    assert statuses.count(401) + statuses.count(429) == addresses * per_address
    # Nothing is lost: every refusal is an entry or in a count, and the listener's count
    # names the addresses it stands for.
    entries = _entries(vault, ANONYMOUS_CAPTURE)[before:]
    assert _accounted(entries) == addresses * per_address
    counted = [e for e in entries if e["details"].get("client") == "*"]
    assert counted
    assert all("127.0.2." in str(e["details"].get("callers")) for e in counted)
