"""atk48c: the capture listener's bound on refusal entries from all addresses (review
30, `COFRE_CAPTURE__LISTENER_REFUSAL_ENTRIES_*`) holds only for a session id the vault
does not know. Sent to a session that exists, the same anonymous refusals are written
one entry each, under the shop's identity, however far past the bound the listener is.

docs/capture.md ("Past 200 refusal entries of the whole listener ...") promises: "That
includes the refusals the capture itself audits before it knows the session (an
unknown session, a wrong secret, the per-address 429): they spend the listener's
budget, and past it the guard counts them". `tests/api/test_capture_refusal_flood.py`
pins it for an unknown session only. `vault.operations.capture.CaptureOperations.
capture_card` honours ``audit_anonymous`` (false once the listener is past its bound)
for the per-address charge and the session lookup, but then charges the session and
compares the secret inside ``self._audited_refusal(owner, ...)``, which writes every
refusal: a wrong secret (401), the session's own wrong-secret limit (429) and the holder
limit. So anyone who loads the shop's checkout once (each page view opens a session and
hands the visitor its id) sends wrong secrets for that one id from many addresses (a
botnet, or an IPv6 /48: 65,536 /64s, each with its own per-address refusal burst) and
every one is a durable audit entry: the listener-wide bound is not a bound. The id stays
usable until the purge, an hour after the session expires (`_session_row` reads expired
and used sessions too).

Second gap (`test_each_addresss_first_held_429_is_within_the_listener_wide_bound`): the
guard's own first held 429 of each address's episode is written without asking the
listener's allowance either.

Deterministic: the listener's allowance is set to 10 entries with a refill of one a day
(the smallest rate the setting takes), so the bound is 10 (+1 for a unit in flight)
whatever the test's duration; 40 addresses x 5 wrong secrets to one real session wrote
one entry per request (~200) before the fix. After it, they are counted past the bound
as the unknown session's are, and every request is still accounted for (entry or count).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import TEST_SHOP, running_vault
from tests.api.test_refusal_attacks import _accounted, _entries
from tests.support.postgres import free_port
from vault.operations.capture import ANONYMOUS_CAPTURE

PAYMENTS = "spiffe://cofre/payments"
WIDE_BURST = 10
ADDRESSES, PER_ADDRESS = 40, 5
NUMBER = "4111" * 4  # a test card (spelt so that no failure output shows it whole)


def _refusal_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries written one by one for a refused capture (not counts)."""
    return [
        e
        for e in entries
        if e["action"] in ("capture", "capture.request") and e["outcome"] != "success"
    ]


@pytest.mark.parametrize(
    "session_kind",
    [
        # The pinned case (review 30), passing: the bound holds for an id nobody opened.
        "unknown",
        # The finding: the same flood sent to a session the shop opened.
        "real",
    ],
)
def test_wrong_secrets_from_many_addresses_are_bounded_listener_wide(
    tmp_path: Path, hsm_provider: HSMProvider, session_kind: str
) -> None:
    capture = CaptureSettings(
        port=free_port(),
        address_per_second=0.5,
        address_burst=PER_ADDRESS,
        listener_refusal_entries_burst=WIDE_BURST,
        listener_refusal_entries_per_second=1 / 86_400,
    )
    with running_vault(tmp_path, hsm_provider, capture=capture) as vault:
        # One page view of the shop's checkout: the visitor learns a session id.
        with vault.client("payments") as shop:
            opened = shop.post(
                "/v1/capture-sessions", json={"origin": TEST_SHOP, "formats": ["pan_bin6_last4"]}
            )
        assert opened.status_code == 201, opened.text
        session = opened.json()["session_id"] if session_kind == "real" else "cs_" + "b" * 32
        before_owner = len(_entries(vault, PAYMENTS))
        before_anon = len(_entries(vault, ANONYMOUS_CAPTURE))
        context = ssl.create_default_context(cafile=str(vault.pki.ca))
        statuses: list[int] = []
        for a in range(ADDRESSES):
            transport = httpx.HTTPTransport(verify=context, local_address=f"127.0.3.{a + 2}")
            with httpx.Client(
                base_url=str(vault.capture_url), transport=transport, timeout=10
            ) as client:
                statuses += [
                    client.post(
                        f"/v1/capture/{session}",
                        json={"secret": f"guess-{a}-{i}", "number": NUMBER},
                        headers={"origin": TEST_SHOP},
                    ).status_code
                    for i in range(PER_ADDRESS)
                ]
    # Read once the vault stopped: its counts are written then (`RefusalFlusher`).
    owner = _entries(vault, PAYMENTS)[before_owner:]
    anonymous = _entries(vault, ANONYMOUS_CAPTURE)[before_anon:]
    # Every guess was refused (401, or 429 once a limit was spent).
    assert statuses.count(401) + statuses.count(429) == ADDRESSES * PER_ADDRESS, statuses
    written = _refusal_entries(owner) + _refusal_entries(anonymous)
    # The listener's allowance (10, refilling one a day) plus one in flight: the rest
    # must be counted, as they are for an unknown session's id.
    assert len(written) <= WIDE_BURST + 1, (
        f"{len(written)} refusal entries written one by one for {ADDRESSES * PER_ADDRESS} "
        f"anonymous wrong secrets from {ADDRESSES} addresses (listener bound {WIDE_BURST}); "
        f"{len(_refusal_entries(owner))} of them under the shop's identity"
    )
    # Nothing is lost: each refusal is an entry or in a count.
    assert _accounted(owner + anonymous) >= ADDRESSES * PER_ADDRESS


def test_each_addresss_first_held_429_is_within_the_listener_wide_bound(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """The same bound, second gap (`api.capture._CaptureGuard._audit_refusal`): an
    address past its own refusal limit is answered 429 by the guard, and the first such
    answer of its episode is written (`Spent.audit`) without asking the listener's
    allowance, which the docs say covers every refusal entry of the listener ("Past 200
    refusal entries of the whole listener ... the rest are counted"). So each address
    of a flood writes one entry more than the bound per episode: 40 addresses sending
    one request past their burst of 5 (to an id nobody opened, so the first gap above
    plays no part) wrote ~50 entries against a bound of 10. An IPv6 /48 is 65,536 such
    addresses, each writing again once its episode's count is flushed."""
    capture = CaptureSettings(
        port=free_port(),
        address_per_second=0.5,
        address_burst=PER_ADDRESS,
        listener_refusal_entries_burst=WIDE_BURST,
        listener_refusal_entries_per_second=1 / 86_400,
    )
    session = "cs_" + "c" * 32
    with running_vault(tmp_path, hsm_provider, capture=capture) as vault:
        before = len(_entries(vault, ANONYMOUS_CAPTURE))
        context = ssl.create_default_context(cafile=str(vault.pki.ca))
        statuses: list[int] = []
        for a in range(ADDRESSES):
            transport = httpx.HTTPTransport(verify=context, local_address=f"127.0.4.{a + 2}")
            with httpx.Client(
                base_url=str(vault.capture_url), transport=transport, timeout=10
            ) as client:
                statuses += [
                    client.post(
                        f"/v1/capture/{session}",
                        json={"secret": f"guess-{a}-{i}", "number": NUMBER},
                        headers={"origin": TEST_SHOP},
                    ).status_code
                    for i in range(PER_ADDRESS + 1)
                ]
    anonymous = _entries(vault, ANONYMOUS_CAPTURE)[before:]
    assert statuses.count(429) >= ADDRESSES, statuses  # each address went past its burst
    written = _refusal_entries(anonymous)
    held = [e for e in written if e["details"].get("limit") == "refusals"]
    assert len(written) <= WIDE_BURST + 1, (
        f"{len(written)} refusal entries written one by one (listener bound {WIDE_BURST}), "
        f"{len(held)} of them an address's first held 429"
    )
    assert _accounted(anonymous) >= ADDRESSES * (PER_ADDRESS + 1)
