"""Session 42 (orc42): the holder of one stolen certificate of a service the policy
leaves without a `rate_limit` sends its refused requests from a host of its own, while
the genuine service, from its address, keeps the identity's allowance of refusal
entries spent (a client bug, a retry loop). Every refusal past the allowance went into
the identity's one ``api.refusals_counted`` entry a minute, and a count, written by the
flusher's thread, carried no ``source``: the attacker's refusals were merged with the
genuine service's under the identity alone, and no entry of the log named the
attacker's address (PCI DSS 10.2.2 asks each entry's origination; docs/auditor-guide.md
promised it for an API request's). Now a count names the origination of what it
counts: its ``source`` when one, else one ``api.refusals_counted_source`` entry per
source before it. Real TLS from two loopback addresses, the real SoftHSM token, SQLite
and PostgreSQL.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from api._refusal_sieve import COUNTED_ACTION
from api.pki import issue_client
from api.refusals import NAMED_SOURCES, RefusalLimiter
from cofre.settings import AuditSettings
from hsm.provider import HSMProvider
from policies.models import RateLimit
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import actor_entries
from tests.support.leakguard import record_responses
from tests.support.pans import card_number
from vault.service import AuditEvent, Source, request_trail

SERVICE = "spiffe://cofre/orc42-ledger"
# A narrow service: a masked read of its own tokens, and no `rate_limit`.
POLICY = """
[identities."spiffe://cofre/orc42-ledger"]
operations = ["detokenize_masked"]
reveal = "masked"
"""
# The allowance spent at once: 5 entries, then one a day.
ALLOWANCE = AuditSettings(refusal_entries_burst=5, refusal_entries_per_second=1 / 86400)
GENUINE, ATTACKER = "127.0.0.1", "127.0.0.2"
COUNTED_SOURCE_ACTION = f"{COUNTED_ACTION}_source"


def _client(vault: VaultServer, address: str, name: str = "orc42-ledger") -> httpx.Client:
    """`name`'s certificate (stolen: the same files) from `address`."""
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    return httpx.Client(
        base_url=vault.url,
        transport=httpx.HTTPTransport(verify=context, local_address=address),
        timeout=10,
        event_hooks=record_responses(vault.tmp / "responses.log"),
    )


def _entries(vault: VaultServer, actor: str = SERVICE) -> list[dict[str, Any]]:
    found = actor_entries(vault.runtime.engine, actor)
    vault.runtime.engine.dispose()  # the connection that read them, on PostgreSQL
    return found


def _refused_from(
    entries: list[dict[str, Any]], address: str, counted: str = COUNTED_ACTION
) -> int:
    """How many refusals the log puts at `address`: entries of their own, and the
    `counted` counts (or a count's per-source entries) naming it."""
    total = 0
    for entry in entries:
        if entry["outcome"] == "success" or entry.get("source", {}).get("address") != address:
            continue
        if entry["action"] in (counted, f"{counted}_source"):
            total += entry["details"]["count"]
        elif not entry["action"].startswith(counted):
            total += 1
    return total


def test_a_stolen_certificates_counted_refusals_name_the_address_they_came_from(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(
        tmp_path, hsm_provider, database_url, extra_policy=POLICY, audit=ALLOWANCE
    ) as vault:
        issue_client(vault.pki, "orc42-ledger")
        with _client(vault, GENUINE) as genuine:  # a client bug: not granted tokenize
            card = {"pan": card_number("411111", 42), "format": "uuid"}
            for _ in range(10):
                answer = genuine.post("/v1/tokenize", json=card)
                assert answer.status_code == 403, answer.text
        with _client(vault, ATTACKER) as attacker:  # probing the API's paths
            for i in range(20):
                assert attacker.get(f"/v1/orc42-probe-{i}").status_code == 404
    # Stopping the vault wrote the counts.
    entries = _entries(vault)
    assert [e for e in entries if e["action"] == COUNTED_ACTION]
    # Before: the 20 probes were counted with the genuine service's 403s, the count
    # naming no address, and no entry put the attacker at 127.0.0.2.
    assert _refused_from(entries, ATTACKER) == 20
    assert _refused_from(entries, GENUINE) == 10


METERED = "spiffe://cofre/orc42-metered"
METERED_POLICY = """
[identities."spiffe://cofre/orc42-metered"]
operations = ["detokenize_masked"]
reveal = "masked"
rate_limit = { per_second = 0.001, burst = 2 }
"""


def test_a_metered_callers_held_429s_name_the_address_they_came_from(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    """The same for a service with a `rate_limit` (as `payments` has): its refusals past
    its refusal bucket are answered 429 and counted in ``api.requests_refused``, which
    named no source either."""
    with running_vault(tmp_path, hsm_provider, database_url, extra_policy=METERED_POLICY) as vault:
        issue_client(vault.pki, "orc42-metered")
        for address, probes in ((GENUINE, 6), (ATTACKER, 9)):
            with _client(vault, address, "orc42-metered") as client:
                for i in range(probes):
                    assert client.get(f"/v1/orc42-probe-{i}").status_code in (404, 429)
    entries = _entries(vault, METERED)
    held = [e for e in entries if e["action"].startswith("api.requests_refused")]
    assert held
    # The bucket's 2 and the first 429 had entries of their own, from 127.0.0.1.
    assert _refused_from(entries, GENUINE, "api.requests_refused") == 6
    assert _refused_from(entries, ATTACKER, "api.requests_refused") == 9


def test_a_count_names_at_most_its_bound_of_sources_and_numbers_the_rest() -> None:
    written: list[AuditEvent] = []
    limiter = RefusalLimiter(
        lambda key: RateLimit(per_second=1 / 86400, burst=1), written.append, clock=lambda: 0.0
    )
    for i in range(NAMED_SOURCES + 4):
        with request_trail(Source(address=f"10.0.0.{i}")):
            limiter.charge(SERVICE, hold=True, note="not_found")
    limiter.flush(everything=True)
    *origins, count = written
    # The burst's one, then the episode's first answer: their own entries (not here).
    assert count.details["count"] == NAMED_SOURCES + 2
    assert [o.source for o in origins] == [
        Source(address=f"10.0.0.{i}") for i in range(2, NAMED_SOURCES + 2)
    ]
    assert {o.action for o in origins} == {"api.requests_refused_source"}
    assert all(o.details["count"] == 1 for o in origins)
    assert count.source is None
    assert (count.details["sources"], count.details["sources_unnamed"]) == (NAMED_SOURCES, 2)


def test_a_count_from_one_source_names_it_and_adds_no_entry() -> None:
    written: list[AuditEvent] = []
    limiter = RefusalLimiter(
        lambda key: RateLimit(per_second=1 / 86400, burst=1), written.append, clock=lambda: 0.0
    )
    attacker = Source(address=ATTACKER)
    for _ in range(5):
        with request_trail(attacker):
            limiter.charge(SERVICE, hold=True, note="not_found")
    limiter.flush(everything=True)
    (count,) = written
    assert (count.source, count.details["count"]) == (attacker, 3)
    assert "sources" not in count.details
