"""Attack review of session 36, one stolen certificate at a time: a 422's ``errors``
name where the body failed (``loc``), and a place in a body can be a key the caller
chose: an unknown field (``extra_forbidden``) or a metadata key whose value fails. Those
keys went back masked by the PAN detector only, which leaves a card written as two
groups of eight joined by a dot (``41111111.11111111``) as it is, so the card went back
in clear in the error body. The capture listener names no key a caller chose (``?``);
the mTLS listener now holds the keys it names to the rule for names a caller chooses
(`cofre.redaction.name_holds_pan_like`, as formats, routes and idempotency keys are).

Real mutual TLS, the payments and officer certificates.
"""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import VaultServer

SHAPE = "41111111.11111111"  # a Luhn-valid test card the detector leaves in free text
CARD = {"pan": "5555555555554444", "format": "uuid"}

CASES = {
    "tokenize, unknown field": ("payments", "POST", "/v1/tokenize", {**CARD, SHAPE: 1}),
    "tokenize, metadata key": (
        "payments",
        "POST",
        "/v1/tokenize",
        {**CARD, "metadata": {SHAPE: "x" * 300}},
    ),
    "batch, unknown field": (
        "payments",
        "POST",
        "/v1/tokenize/batch",
        {"items": [{**CARD, SHAPE: 1}]},
    ),
    "lookup, unknown field": ("payments", "POST", "/v1/lookup", {"pan": CARD["pan"], SHAPE: 1}),
    "masked read, unknown field": (
        "payments",
        "POST",
        "/v1/detokenize-masked",
        {"token": "x", SHAPE: 1},
    ),
    "update, unknown field": ("payments", "PATCH", "/v1/tokens/x", {SHAPE: 1}),
    "capture session, unknown field": (
        "payments",
        "POST",
        "/v1/capture-sessions",
        {"origin": "https://shop.example", "formats": ["uuid"], SHAPE: 1},
    ),
    "ceremony, unknown field": (
        "officer-alice",
        "POST",
        "/v1/admin/keys/rotations",
        {"kind": "data", SHAPE: 1},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_key_the_caller_chose_is_not_answered_back_holding_a_card(
    vault_server: VaultServer, case: tuple[str, str, str, dict[str, object]]
) -> None:
    name, method, path, body = case
    with vault_server.client(name) as client:  # an officer signs: the schema is checked after
        answer = client.request(method, path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "invalid_request"
    assert not re.search(r"[0-9]{8}", answer.text), answer.text
    # Still says where: the place of the key, not its name.
    assert problem["errors"], problem
    assert all(error["loc"][0] == "body" for error in problem["errors"]), problem


def test_the_schema_s_own_names_are_still_named(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as client:
        answer = client.post("/v1/tokenize", json={**CARD, "ttl_seconds": "60", "colour": 1})
    assert answer.status_code == 422, answer.text
    places = sorted(tuple(e["loc"]) for e in answer.json()["errors"])
    assert places == [("body", "colour"), ("body", "ttl_seconds")], places
