"""The vault API over real mutual TLS: identities, policies, problem+json, limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.guard import BATCH_PATHS
from tests.api.conftest import VaultServer

VISA = "4111111111111111"
PROBLEM = "application/problem+json"


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert str(body["type"]).endswith(code)
    assert VISA not in response.text
    return body


def _tokenize(vault: VaultServer, pan: str = VISA, fmt: str = "pan_bin6_last4") -> str:
    with vault.client("payments") as c:
        response = c.post("/v1/tokenize", json={"pan": pan, "format": fmt})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_no_client_certificate_fails_the_handshake(vault_server: VaultServer) -> None:
    with vault_server.client(None) as c, pytest.raises(httpx.TransportError):
        c.get("/healthz")


def test_certificate_from_another_ca_fails(vault_server: VaultServer) -> None:
    with (
        vault_server.client("payments", pki=vault_server.other_pki) as c,
        pytest.raises(httpx.TransportError),
    ):
        c.get("/healthz")


def test_tokenize_and_reveal_levels(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        response = c.post(
            "/v1/tokenize",
            json={"pan": VISA, "format": "pan_bin6_last4"},
            headers={"x-request-id": "req-abc-123"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-abc-123"
    body = response.json()
    token = body["token"]
    assert token[:6] == "411111"
    assert token[-4:] == "1111"
    assert set(body) == {
        "token",
        "token_id",
        "format",
        "created_at",
        "expires_at",
        "metadata",
        "existing",
    }
    with vault_server.client("settlement") as c:
        full = c.post("/v1/detokenize", json={"token": token})
    assert full.status_code == 200
    # A card tokenized without expiry or name answers them as null (issue 22).
    assert full.json() == {
        "token": token,
        "pan": VISA,
        "reveal": "full",
        "expiry": None,
        "cardholder_name": None,
    }
    with vault_server.client("ledger") as c:
        masked = c.post("/v1/detokenize", json={"token": token})
    assert masked.json() == {
        "token": token,
        "pan": "411111******1111",
        "reveal": "masked",
        "expiry": None,
        "cardholder_name": None,
    }
    with vault_server.client("payments") as c:
        denied = c.post("/v1/detokenize", json={"token": token})
        m = c.post("/v1/detokenize-masked", json={"token": token})
    _problem(denied, 403, "policy_denied")
    assert m.json() == {"token": token, "masked_pan": "411111******1111", "expiry": None}


def test_identity_not_in_policy_and_officer(vault_server: VaultServer) -> None:
    token = _tokenize(vault_server)
    with vault_server.client("stranger") as c:
        _problem(c.post("/v1/detokenize", json={"token": token}), 403, "policy_denied")
    with vault_server.client("officer-alice") as c:
        _problem(c.post("/v1/detokenize", json={"token": token}), 403, "policy_denied")
        assert c.get("/v1/audit/head").status_code in (200, 404)


def test_identity_comes_from_the_certificate_not_headers(vault_server: VaultServer) -> None:
    with vault_server.client("stranger") as c:
        response = c.post(
            "/v1/tokenize",
            json={"pan": VISA, "format": "pan_bin6_last4"},
            headers={
                "x-client-identity": "spiffe://cofre/payments",
                "x-forwarded-client-cert": "URI=spiffe://cofre/payments",
            },
        )
    _problem(response, 403, "policy_denied")


def test_batch_lookup_metadata_delete(vault_server: VaultServer) -> None:
    pans = ["4000000000000002", "5555555555554444", "4000000000000002"]
    with vault_server.client("payments") as c:
        batch = c.post(
            "/v1/tokenize/batch",
            json={
                "items": [
                    {"pan": p, "format": "pan_bin6_last4", "metadata": {"order": f"o{i}"}}
                    for i, p in enumerate(pans)
                ]
            },
        )
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert results[0]["token"] == results[2]["token"]
        bad = c.post(
            "/v1/tokenize/batch",
            json={
                "items": [
                    {"pan": "4000000000000010", "format": "pan_bin6_last4"},
                    {"pan": "４１１１１１１１１１１１１１１１", "format": "pan_bin6_last4"},
                ]
            },
        )
        body = _problem(bad, 422, "batch_item_invalid")
        assert body["item"] == 1
        assert body["item_code"] == "invalid_pan"
        found = c.post("/v1/lookup", json={"pan": "5555555555554444"}).json()["tokens"]
        assert [t["token"] for t in found] == [results[1]["token"]]
        # A format the caller may not use is refused as tokenize refuses it, not [].
        unknown = {"pan": "5555555555554444", "format": "no_such_format"}
        _problem(c.post("/v1/lookup", json=unknown), 403, "policy_denied")
        info = c.get(f"/v1/tokens/{results[1]['token']}")
        assert info.json()["metadata"] == {"order": "o1"}
        assert c.delete(f"/v1/tokens/{results[1]['token']}").json()["deleted"] is True
        assert c.delete(f"/v1/tokens/{results[1]['token']}").json()["deleted"] is False
        _problem(c.get(f"/v1/tokens/{results[1]['token']}"), 404, "token_not_found")
    with vault_server.client("settlement") as c:
        detok = c.post(
            "/v1/detokenize/batch", json={"tokens": [results[0]["token"], results[2]["token"]]}
        )
        assert [r["pan"] for r in detok.json()["results"]] == [pans[0], pans[2]]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"pan": "４１１１１１１１１１１１１１１１", "format": "pan_bin6_last4"},
            422,
            "invalid_pan",
        ),
        ({"pan": "٤١١١١١١١١١١١١١١١", "format": "pan_bin6_last4"}, 422, "invalid_pan"),
        ({"pan": "4111-1111-1111-1111", "format": "pan_bin6_last4"}, 422, "invalid_pan"),
        ({"pan": "41111111111", "format": "pan_bin6_last4"}, 422, "invalid_pan"),
        ({"pan": 4111111111111111, "format": "pan_bin6_last4"}, 422, "invalid_request"),
        ({"pan": VISA, "format": "pan_bin6_last4", "extra": 1}, 422, "invalid_request"),
        ({"pan": VISA, "format": "pan_bin6_last4", "ttl_seconds": -5}, 422, "invalid_request"),
        ({"pan": VISA, "format": "no_such_format"}, 403, "policy_denied"),
        ({"pan": "378282246310005", "format": "pan_fpe"}, 422, "format_not_applicable"),
        (
            {"pan": VISA, "format": "pan_bin6_last4", "metadata": {"k": VISA}},
            422,
            "invalid_metadata",
        ),
        (
            {"pan": VISA, "format": "pan_bin6_last4", "metadata": {VISA: "v"}},
            422,
            "invalid_metadata",
        ),
        # Sensitive authentication data (PCI DSS 3.3.1): refused by name and by shape.
        (
            {"pan": VISA, "format": "pan_bin6_last4", "metadata": {"cvv": "123"}},
            422,
            "sensitive_authentication_data",
        ),
        (
            {
                "pan": VISA,
                "format": "pan_bin6_last4",
                "metadata": {"n": ";4000000000000001=29121010000012300000?"},
            },
            422,
            "sensitive_authentication_data",
        ),
        (
            {"pan": VISA, "format": "pan_bin6_last4", "idempotency_key": f"order-{VISA}"},
            422,
            "invalid_metadata",
        ),
        ({"format": "pan_bin6_last4"}, 422, "invalid_request"),
        ([], 422, "invalid_request"),
        # Names the caller chose come back in an error's location: never a PAN in them.
        ({"pan": VISA, "format": "pan_bin6_last4", VISA: 1}, 422, "invalid_request"),
        (
            {"pan": VISA, "format": "pan_bin6_last4", "metadata": {VISA + "k" * 60: "v"}},
            422,
            "invalid_request",
        ),
    ],
)
def test_bad_input_is_problem_json(
    vault_server: VaultServer, body: object, status: int, code: str
) -> None:
    with vault_server.client("payments") as c:
        response = c.post("/v1/tokenize", json=body)
    problem = _problem(response, status, code)
    assert "4111111111" not in json.dumps(problem)


def test_malformed_bodies(vault_server: VaultServer) -> None:
    headers = {"content-type": "application/json"}
    with vault_server.client("payments") as c:
        _problem(
            c.post("/v1/tokenize", content=b'{"pan": "4111', headers=headers), 400, "malformed_json"
        )
        deep = b"[" * 100_000 + b"]" * 100_000
        r = c.post("/v1/tokenize/batch", content=deep, headers=headers)
        assert r.status_code in (400, 413, 422)
        assert r.headers["content-type"].startswith(PROBLEM)
        _problem(
            c.post("/v1/tokenize", content=b"x" * 200_000, headers=headers),
            413,
            "payload_too_large",
        )
        _problem(
            c.post(
                "/v1/tokenize",
                content=b"pan=4111111111111111",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            415,
            "unsupported_media_type",
        )
        _problem(
            c.post("/v1/tokenize", content=b"{}", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        _problem(c.get("/v1/nothing-here"), 404, "not_found")
        _problem(c.put("/v1/tokenize", json={}), 405, "method_not_allowed")
        _problem(c.get("/v1/tokens/" + "9" * 80), 422, "invalid_request")


def test_chunked_body_over_the_limit(vault_server: VaultServer) -> None:
    def chunks() -> object:
        for _ in range(100):
            yield b"[" * 1000

    with vault_server.client("payments") as c:
        response = c.post(
            "/v1/tokenize",
            content=chunks(),  # type: ignore[arg-type]
            headers={"content-type": "application/json"},
        )
    _problem(response, 413, "payload_too_large")


def test_only_the_batch_routes_take_the_batch_body_limit(vault_server: VaultServer) -> None:
    """Review 26: the limit was chosen by the path's suffix, so 1 MB to a relay route
    named "batch" was read and parsed before the policy refused it."""
    body = json.dumps({"card": {"number": "t"}, "pad": "x" * 1_000_000})
    headers = {"content-type": "application/json"}
    with vault_server.client("getnet-adapter") as c:
        for path in ("/v1/relay/anything", "/v1/relay/batch"):
            _problem(c.post(path, content=body, headers=headers), 413, "payload_too_large")
    documented = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert {path for path in documented["paths"] if path.endswith("/batch")} == BATCH_PATHS


def test_health_and_readiness(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        assert c.get("/healthz").json() == {"status": "alive", "checks": {}}
        ready = c.get("/readyz").json()
    assert ready == {
        "status": "ready",
        "checks": {
            "hsm": "ok",
            "database": "ok",
            "key_registry": "ok",
            "audit_sequencer": "ok",
            "key_cryptoperiods": "ok",
            "token_purge": "ok",
            "key_rotation": "ok",
            "hsm_key_presence": "ok",
        },
    }


def test_audit_endpoints(vault_server: VaultServer) -> None:
    _tokenize(vault_server, "4000000000000002")
    deadline = time.monotonic() + 10
    with vault_server.client("auditor") as c:
        while time.monotonic() < deadline:
            head = c.get("/v1/audit/head")
            if head.status_code == 200 and head.json()["tree_size"] >= 2:
                break
            time.sleep(0.1)
        assert head.status_code == 200, head.text
        size = head.json()["tree_size"]
        proof = c.get("/v1/audit/proof/inclusion", params={"index": 0, "size": size})
        assert proof.status_code == 200
        assert proof.json()["tree_size"] == size
        cons = c.get("/v1/audit/proof/consistency", params={"size1": 1, "size2": size})
        assert cons.status_code == 200
        _problem(c.get("/v1/audit/proof/inclusion", params={"index": 10**9}), 404, "not_found")
        _problem(c.get("/v1/audit/proof/inclusion", params={"index": -1}), 422, "invalid_request")
    with vault_server.client("payments") as c:
        _problem(c.get("/v1/audit/head"), 403, "policy_denied")


def test_pan_as_request_id_is_replaced(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        response = c.post(
            "/v1/tokenize",
            json={"pan": VISA, "format": "pan_last4"},
            headers={"x-request-id": VISA},
        )
    assert response.headers["x-request-id"] != VISA
    assert VISA not in response.headers["x-request-id"]


def test_request_id_reaches_the_audit_entry(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        c.post(
            "/v1/tokenize",
            json={"pan": VISA, "format": "pan_last4"},
            headers={"x-request-id": "trace-me-42"},
        )
    with vault_server.runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE payload LIKE '%trace-me-42%'")
        ).scalars()
        payloads = list(rows)
    assert len(payloads) == 1
    assert '"actor":"spiffe://cofre/payments"' in payloads[0]
    assert VISA not in payloads[0]


def test_rate_limit(vault_server: VaultServer) -> None:
    with vault_server.client("limited") as c:
        statuses = [
            c.post("/v1/tokenize", json={"pan": VISA, "format": "uuid"}).status_code
            for _ in range(2)
        ]
        limited = c.post("/v1/tokenize", json={"pan": VISA, "format": "uuid"})
    assert statuses == [200, 200]
    _problem(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
