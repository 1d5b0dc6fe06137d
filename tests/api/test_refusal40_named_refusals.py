"""Session 40: which cards did a stolen certificate probe? (PCI DSS v4.0.1 10.2.1.4: the
audit logs capture all invalid logical access attempts; 10.2.2: each entry names the
affected data.)

The holder of one stolen certificate of a service the policy leaves without a
`rate_limit` (the guide's shop backend: `capture` and masked reads of the payments
domain) asks for the full card behind 1,000 different tokens the vault holds. Each is
refused 403 ``policy_denied``. Before: the denial entries named no token at all (the
vault's policy denial is written before any row is read), and past the session-39
allowance (`api._refusal_sieve.UNMETERED_REFUSALS`) the rest were only counted by code;
a QSA reading the log could not say which card records were asked for.

Now a denial of an operation naming a token names its record (``token_id``, the record's
id: never the token digits, never a PAN), and a count past the allowance names up to
`api.refusals.NAMED_TOKENS` of the records it covers, one small entry each with its codes
and number, and says how many more different ones there were. The log's growth per
1,000 refusals stays bounded (measured here). Real TLS, SoftHSM, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from api._refusal_sieve import COUNTED_ACTION, COUNTED_TOKEN_ACTION, NAMED_REFUSALS
from api.pki import issue_client
from api.refusals import NAMED_TOKENS
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.pans import card_number

BACKEND = "spiffe://cofre/shop-backend"
SHOP_BACKEND = """
[identities."spiffe://cofre/shop-backend"]
scope = "out"
operations = ["capture", "detokenize_masked"]
formats = ["pan_bin6_last4"]
reveal = "masked"
read_domains = ["spiffe://cofre/payments"]
capture_origins = ["https://shop.example"]
"""
# Past the allowance of refusals about held records (1,000 by default).
PROBES = NAMED_REFUSALS.burst + 500


def _payloads(vault: VaultServer) -> list[str]:
    with vault.runtime.engine.connect() as connection:
        return list(
            connection.execute(sa.text("SELECT payload FROM audit_entries ORDER BY id")).scalars()
        )


def _records(vault: VaultServer) -> dict[str, str]:
    """Token value -> record id, as the database holds them."""
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT token, id FROM tokens")).all()
    return {str(token): str(record) for token, record in rows}


@pytest.mark.slow
def test_a_qsa_can_name_the_records_a_stolen_certificate_probed(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url, extra_policy=SHOP_BACKEND) as vault:
        issue_client(vault.pki, "shop-backend")
        with vault.client("payments") as payments:
            tokens = []
            for start in range(0, PROBES, 1_000):
                items = [
                    {"pan": card_number("411111", i), "format": "uuid"}
                    for i in range(start, min(PROBES, start + 1_000))
                ]
                made = payments.post("/v1/tokenize/batch", json={"items": items})
                assert made.status_code == 200, made.text
                tokens += [r["token"] for r in made.json()["results"]]
        records = _records(vault)
        probed = {records[t] for t in tokens}
        before = len(_payloads(vault))
        started = time.monotonic()
        with vault.client("shop-backend") as stolen:
            answers = [stolen.post("/v1/detokenize", json={"token": t}) for t in tokens]
        elapsed = time.monotonic() - started
        assert {a.status_code for a in answers} == {403}
        assert {a.json()["code"] for a in answers} == {"policy_denied"}
    payloads = _payloads(vault)[before:]
    vault.runtime.engine.dispose()
    entries = [json.loads(p) for p in payloads]
    mine = [e for e in entries if e["actor"] == BACKEND]
    written = [e for e in mine if e["action"] == "detokenize"]
    counts = [e for e in mine if e["action"] == COUNTED_ACTION]
    named_counts = [e for e in mine if e["action"] == COUNTED_TOKEN_ACTION]

    # Every refusal is in the log, as its own entry or in a count (session 39).
    assert len(written) + sum(e["details"]["count"] for e in counts) == PROBES
    # Each denial written on its own names the record it was about: all of the first
    # 1,000 (their own allowance), then one a second.
    assert all(e["token_id"] in probed for e in written), written[:2]
    assert len(written) >= NAMED_REFUSALS.burst
    # The count names up to the bound of the records it covers, with code and number...
    listed = {e["token_id"] for e in named_counts}
    assert listed <= probed
    assert all(e["details"]["codes"] == "policy_denied x1" for e in named_counts)
    assert len(named_counts) == len(listed) <= NAMED_TOKENS * len(counts)
    # ...and says how many different ones it left unnamed: the QSA can list every record
    # named and knows how many more were probed.
    unnamed = sum(e["details"]["tokens_unnamed"] for e in counts)
    named = {e["token_id"] for e in written} | listed
    assert len(named) == min(PROBES, len(written) + NAMED_TOKENS * len(counts))
    assert len(named) + unnamed == PROBES
    # Never a token's digits nor a card: the ids are the records', and no PAN is anywhere.
    assert not any(t in p for p in payloads for t in tokens[:50])

    assert all(e["details"]["limit"] == "named_refusal_entries" for e in counts)

    # The growth stays bounded: the allowance, one count a minute per worker and at most
    # NAMED_TOKENS small entries with it (here ~1,070 entries, ~0.42 MB, for 1,500).
    limit = NAMED_REFUSALS
    bound = limit.burst + math.ceil(limit.per_second * elapsed) + 2
    assert len(mine) <= bound + len(counts) * (1 + NAMED_TOKENS)
    size = sum(len(p.encode()) for p in payloads if json.loads(p)["actor"] == BACKEND)
    print(f"refusal40: {len(mine)} entries, {size} bytes for {PROBES} refusals")  # noqa: T201
    assert size < 500 * len(mine)
