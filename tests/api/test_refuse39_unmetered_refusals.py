"""Session 39: the holder of one stolen certificate of a service the policy leaves
without a `rate_limit` (a shop's backend granted `capture`, outside PCI scope, as the
guide's example has it) sends request after request the vault refuses: capture
sessions past the identity's `capture_sessions` bound (429), operations it was not
granted (403 ``policy_denied``), malformed bodies (400/422), paths that do not exist
(404). The refusal bucket leaves such a service unlimited (docs/threat-model.md,
"Residual risks"), so each refusal was a durable audit entry, a row for the sequencer
and a transaction: the log grew at the attacker's pace.

Now a service without a `rate_limit` has a default allowance of refusal entries
(`api._refusal_sieve.UNMETERED_REFUSALS`, per worker): past it its refusals are still
answered with their own codes (nothing of its traffic is held back, as its policy
says), but their entries are counted, one ``api.refusals_counted`` entry per caller
and minute naming the codes and their numbers, as the counted 429s of an identity with
a `rate_limit` are (PCI DSS 10.2.1.4: every invalid attempt is in the log, as an entry
or in a count). Real TLS, the real SoftHSM token, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api._refusal_sieve import COUNTED_ACTION, UNMETERED_REFUSALS
from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import TEST_SHOP, VaultServer, running_vault

BACKEND = "spiffe://cofre/shop-backend"
# The guide's shop backend: `capture` and a masked read, no `rate_limit`. Its own
# capture-session bound is small here so that the loop meets it at once.
SHOP_BACKEND = """
[identities."spiffe://cofre/shop-backend"]
scope = "out"
operations = ["capture", "detokenize_masked"]
formats = ["pan_bin6_last4"]
reveal = "masked"
capture_origins = ["https://shop.example"]
capture_sessions = { per_minute = 1, burst = 1, max_live = 1 }
"""
REFUSALS = 1_000


def _entries(vault: VaultServer, actor: str) -> list[dict[str, Any]]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries ORDER BY id")
        ).scalars()
        return [e for e in (json.loads(r) for r in rows) if e["actor"] == actor]


def _refused(client: httpx.Client, n: int) -> list[httpx.Response]:
    """`n` refused requests of four kinds, in turn."""
    answers = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # past its capture-session bound: 429 from the vault
            answer = client.post(
                "/v1/capture-sessions", json={"origin": TEST_SHOP, "formats": ["pan_bin6_last4"]}
            )
        elif kind == 1:  # not granted: 403 policy_denied, audited by the vault
            answer = client.post(
                "/v1/tokenize", json={"pan": "4111111111111111", "format": "pan_bin6_last4"}
            )
        elif kind == 2:  # malformed: audited by the request guard
            answer = client.post(
                "/v1/capture-sessions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
        else:  # a path that does not exist
            answer = client.get(f"/v1/no-such-path-{i}")
        answers.append(answer)
    return answers


@pytest.mark.slow
def test_a_service_without_rate_limit_cannot_write_an_entry_per_refusal(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url, extra_policy=SHOP_BACKEND) as vault:
        issue_client(vault.pki, "shop-backend")
        started = time.monotonic()
        with vault.client("shop-backend") as client:
            answers = _refused(client, REFUSALS)
            # Still served: an answer about what the vault holds, its own entry.
            missing = client.post("/v1/detokenize-masked", json={"token": "tok_none"})
        elapsed = time.monotonic() - started
        during = _entries(vault, BACKEND)
        assert missing.json()["code"] == "token_not_found", missing.text

        refused = [a for a in answers if a.status_code >= 400]
        # Its requests keep their own answers: the service is not held back.
        assert {a.json()["code"] for a in refused} <= {
            "rate_limited",
            "policy_denied",
            "malformed_json",
            "not_found",
        }
        assert all("refused requests" not in a.json().get("detail", "") for a in refused)
        written = [e for e in during if e["outcome"] != "success"]
        # Before session 39: 999 entries for 999 refusals (one session was opened).
        # Now the allowance's burst and refill, and the first of the episode.
        limit = UNMETERED_REFUSALS
        assert len(written) <= limit.burst + math.ceil(limit.per_second * elapsed) + 2
        assert len(written) < REFUSALS / 5
        # And each refusal spent one unit: a tokenize begun on the event loop runs again
        # in a thread to write its entry, and asked twice until the sieve kept its
        # answer (80 written, not the burst's 100).
        assert len(written) >= limit.burst

    # Stopping the vault writes the count: every refusal is in the log, as its own
    # entry or in the count, by code.
    after = _entries(vault, BACKEND)
    vault.runtime.engine.dispose()  # the connection that read them, on PostgreSQL
    counted = [e for e in after if e["action"] == COUNTED_ACTION]
    assert counted
    assert all(e["outcome"] == "denied" for e in counted)
    own = [e for e in after if e["outcome"] != "success" and e["action"] != COUNTED_ACTION]
    (miss,) = [e for e in own if e["details"].get("error") == "token_not_found"]
    own.remove(miss)
    assert len(own) + sum(e["details"]["count"] for e in counted) == len(refused)
    codes = counted[-1]["details"]["codes"]
    for code in ("rate_limited", "policy_denied", "malformed_json", "not_found"):
        assert f"{code} x" in codes
    assert counted[-1]["details"]["limit"] == "refusal_entries"
