"""Strings a caller chooses (metadata, X-Request-ID, token format and relay route names,
capture origins, idempotency keys) reach the clear metadata, the logs, the audit log and
error bodies: a card number in any shape the detector knows must never get there (review
finding High 1, session 8). Over real mTLS with the payments certificate."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from tests.api.conftest import VaultServer

PAN = "4111111111111111"
CARD = {"pan": PAN, "format": "pan_bin6_last4"}
OTHER = {"pan": "5555555555554444", "format": "pan_last4"}


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:200]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


SEPARATED = {
    "8+8": "41111111 11111111",
    "mixed": "4111 1111-1111 1111",
    "hex32": "a" + PAN + "bcdef0123456789",
    "arabic": "".join(chr(0x660 + int(d)) for d in PAN),
    "dot-among-mixed": "4111 1111.1111-1111",
    "bare-comma": "41111111,11111111",
    "json-text-mixed": '["4111", 1111, "1111", 1111]',
}


@pytest.mark.parametrize("value", SEPARATED.values(), ids=SEPARATED.keys())
def test_a_card_number_in_metadata_is_refused(vault_server: VaultServer, value: str) -> None:
    # Metadata is stored in clear and answered by GET /v1/tokens/{token} to every reader
    # of the domain; docs/api.md: "a key or value that looks like a card number is
    # refused with 422 invalid_metadata".
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json={**OTHER, "metadata": {"note": value}})
    _problem(response, 422, "invalid_metadata")


@pytest.mark.parametrize("value", ["41111111.11111111", "41111111-11111111"])
def test_a_card_number_as_request_id_is_not_logged_or_echoed(
    vault_server: VaultServer, value: str
) -> None:
    # docs/api.md: X-Request-ID "no long digit runs"; it goes to the response, logs,
    # traces and the audit entry.
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json=CARD, headers={"x-request-id": value})
    assert response.headers.get("x-request-id") != value
    assert value not in vault_server.logs.getvalue()


def test_a_card_number_never_reaches_the_append_only_audit_log(vault_server: VaultServer) -> None:
    # Caller-chosen strings (format, relay route, capture origin, idempotency key) go to
    # problem details and to audit details. The audit log cannot be shredded: a card
    # planted there stays for its retention.
    planted = "41111111 11111111"
    with vault_server.client("payments") as client:
        _problem(
            client.post("/v1/tokenize", json={"pan": PAN, "format": planted}),
            422,
            "invalid_request",
        )
        _problem(
            client.post("/v1/tokenize", json={**CARD, "idempotency_key": planted}),
            422,
            "invalid_request",  # the space is outside its charset
        )
        _problem(
            client.post("/v1/tokenize", json={**CARD, "idempotency_key": "41111111.11111111"}),
            422,
            "invalid_metadata",  # stored in clear, like metadata
        )
        _problem(
            client.post(
                "/v1/capture-sessions",
                json={"origin": "https://41111111.11111111.example", "formats": ["pan_bin6_last4"]},
            ),
            422,
            "invalid_request",
        )
    with vault_server.client("getnet-adapter") as client:
        _problem(client.post("/v1/relay/41111111%2011111111", json={}), 422, "invalid_request")
    with vault_server.runtime.engine.connect() as connection:
        payloads = connection.execute(sa.text("SELECT payload FROM audit_entries")).scalars().all()
    digits = ["".join(c for c in str(p) if c.isdigit() or c in " -") for p in payloads]
    planted_entries = [d for d in digits if "41111111 11111111" in d or "41111111-11111111" in d]
    assert not planted_entries


# Two overlapping Luhn windows made the detector raise (StopIteration): as a metadata
# value the request hung with no audit and no log, as a key a 500.
OVERLAPPING = "4111111111 111111 411111111 111111"


@pytest.mark.parametrize(
    "body",
    [
        {**OTHER, "metadata": {"note": OVERLAPPING}},
        {**OTHER, "metadata": {OVERLAPPING: "x"}},
        {**OTHER, "metadata": {OVERLAPPING: 5}},
        {**OTHER, "metadata": {"a": [OVERLAPPING]}},
        {**OTHER, "idempotency_key": OVERLAPPING},
        {**OTHER, "format": OVERLAPPING},
        {**OTHER, "pan": OVERLAPPING},
    ],
    ids=["value", "key", "key-bad-value", "list-value", "idempotency-key", "format", "pan"],
)
def test_a_caller_cannot_make_the_detector_fail(vault_server: VaultServer, body: object) -> None:
    with vault_server.client("payments") as client:
        response = client.post("/v1/tokenize", json=body, timeout=20)
    assert response.status_code in {400, 403, 422}, response.text[:200]
    assert response.json()["code"] != "internal_error"
