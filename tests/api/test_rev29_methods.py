"""Review 29: the HTTP method is text the caller chooses. llhttp (the mTLS listener's
default parser) takes only the methods it knows, but h11 takes any token up to the
request head's limit: the capture listener always runs h11, and the mTLS listener does
with ``COFRE_SERVER__HTTP_PROTOCOL=h11``. The method went, as sent, into the request
metric's labels, the span, the log line and the refusal's audit entry.

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix)."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries
from tests.support.postgres import free_port

CARD = "5555555555554444"  # sent as a method: a token h11 takes (digits are token chars)
KNOWN = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
OTHER = "_OTHER"  # OpenTelemetry's name for a method the instrumentation does not know


@pytest.fixture(scope="module")
def h11_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    with running_vault(
        tmp_path_factory.mktemp("rev29methods"),
        hsm_provider,
        http_protocol="h11",
        capture=CaptureSettings(port=free_port()),
    ) as vault:
        yield vault


def _client(vault: VaultServer, listener: str, name: str = "ledger") -> httpx.Client:
    return vault.capture_client() if listener == "capture" else vault.client(name)


def _methods(n: int) -> list[str]:
    return [
        "M" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(12)) for _ in range(n)
    ]


def _metric_methods(vault: VaultServer) -> set[str]:
    data = vault.metrics.get_metrics_data()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            attributes = node.get("attributes")
            if isinstance(attributes, dict) and "method" in attributes:
                found.add(str(attributes["method"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(data.to_json()) if data else {})
    return found


def test_finding_made_up_methods_do_not_grow_the_request_metric_without_bound(
    h11_vault: VaultServer,
) -> None:
    """Medium (fixed). ``cofre.http.requests`` and the latency histogram are kept per
    (route, method, status, code), for the life of the worker: with h11, every request
    with a method never sent before added a series, whatever it was answered (404, or a
    429 once the caller's refusal bucket is empty). One certificate (one the policy
    does not know too) sending made-up methods of up to 16 KiB grew the worker's memory
    and every /metrics scrape without end. Now a method outside HTTP's nine is recorded
    as ``_OTHER``, as OpenTelemetry's conventions name it."""
    # A certificate naming an identity the policy does not know: denied everything.
    with _client(h11_vault, "mtls", "stranger") as client:
        for method in _methods(40):
            assert client.request(method, "/v1/tokenize").status_code in {404, 405, 429}
    assert _metric_methods(h11_vault) <= KNOWN | {OTHER}, len(_metric_methods(h11_vault))


@pytest.mark.parametrize("listener", ["mtls", "capture"])
def test_finding_a_card_number_sent_as_the_method_is_kept_nowhere(
    h11_vault: VaultServer, listener: str
) -> None:
    """Medium (fixed). A card number is a valid method token. On the mTLS listener it was
    a label of the request metric (Prometheus on a plain-HTTP port, OTLP) and the span's
    ``http.request.method``, in clear: neither passes through the log masking. Logs
    and audit entries masked it, but kept any other text the caller chose, 4 KiB of it
    per refusal entry on the capture listener, which anyone on the internet reaches
    (an ordinary refusal entry is ~600 bytes: the listener's cap on refusal entries
    a second bounded their number, not their size). Now such a method is ``_OTHER``
    in the metric, the span, the log line and the audit entry."""
    with _client(h11_vault, listener) as client:
        answers = [client.request(m, "/v1/nothing-here") for m in (CARD, "L" * 8000)]
    assert [a.status_code for a in answers] == [404, 404]
    rids = [a.headers["x-request-id"] for a in answers]
    # Booleans: a failing assertion must not print the card it found.
    in_metric = CARD in _metric_methods(h11_vault)
    assert not in_metric
    spans = h11_vault.spans.get_finished_spans()
    span_methods = {str((s.attributes or {}).get("http.request.method")) for s in spans}
    in_span = CARD in span_methods or any(CARD in s.name for s in spans)
    assert not in_span
    entries = [e for rid in rids for e in request_entries(h11_vault.runtime.engine, rid)]
    assert [e["details"]["method"] for e in entries] == [OTHER, OTHER]
    logged = [
        json.loads(line)
        for line in h11_vault.logs.getvalue().splitlines()
        if line.startswith("{") and any(rid in line for rid in rids)
    ]
    assert len(logged) == 2
    assert {line["method"] for line in logged} == {OTHER}


def test_known_methods_are_recorded_as_they_are(h11_vault: VaultServer) -> None:
    """Holds: the nine methods keep their names (a 405 names the method refused)."""
    rid = new_request_id()
    with h11_vault.client("payments") as client:
        assert (
            client.request("PATCH", "/v1/tokenize", headers={"x-request-id": rid}).status_code
            == 405
        )
    (entry,) = request_entries(h11_vault.runtime.engine, rid)
    assert entry["details"]["method"] == "PATCH"
