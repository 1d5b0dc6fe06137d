"""Officer MFA over real mutual TLS (PCI DSS 8.4.1, 8.4.2): an attacker holding one stolen
officer or auditor certificate, without the token key, can neither run a key ceremony
action nor export evidence; every refusal is a stable problem code and an audit entry."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import string
import time
from typing import Any

import httpx
import sqlalchemy as sa

from tests.api.conftest import VaultServer
from tests.support.officers import signature_headers, software_officers

ROTATIONS = "/v1/admin/keys/rotations"
EVIDENCE_BODY = {"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"}


def _rid() -> str:
    return "rid-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))


def _signed(
    vault: VaultServer, name: str, path: str, body: bytes, **overrides: Any
) -> dict[str, str]:
    return signature_headers(
        software_officers()[name],
        path,
        body,
        # The Host the client sends: this vault's address (its certificate names it).
        authority=overrides.get("authority", httpx.URL(vault.url).netloc.decode()),
        keyid=overrides.get("keyid"),
        nonce=overrides.get("nonce"),
    )


def _post(
    vault: VaultServer, name: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, str]:
    rid = _rid()
    with vault.client(name, signed=False) as client:
        response = client.post(
            path,
            content=body,
            headers={**headers, "content-type": "application/json", "x-request-id": rid},
        )
    return response, rid


def _audited(vault: VaultServer, rid: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        with vault.runtime.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p ORDER BY id"),
                {"p": f'%"request_id":"{rid}"%'},
            ).scalars()
            entries = [json.loads(r) for r in rows]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def _refused(vault: VaultServer, response: httpx.Response, rid: str, code: str) -> None:
    assert response.status_code == (403 if code == "mfa_not_registered" else 401), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    [entry] = _audited(vault, rid)
    assert (entry["action"], entry["outcome"]) == ("api.request", "denied")
    assert entry["details"]["code"] == code


def test_stolen_certificate_without_the_token_key(vault_server: VaultServer) -> None:
    body = b'{"kind":"data"}'
    response, rid = _post(vault_server, "officer-alice", ROTATIONS, body, {})
    _refused(vault_server, response, rid, "mfa_required")
    evidence = json.dumps(EVIDENCE_BODY).encode()
    response, rid = _post(vault_server, "auditor", "/v1/evidence", evidence, {})
    _refused(vault_server, response, rid, "mfa_required")
    # Approve and cancel are ceremony actions too.
    response, rid = _post(vault_server, "officer-bob", f"{ROTATIONS}/x/approve", b"", {})
    _refused(vault_server, response, rid, "mfa_required")


def test_replayed_signature(vault_server: VaultServer) -> None:
    body = b'{"kind":"fingerprint"}'
    headers = _signed(vault_server, "officer-alice", ROTATIONS, body)
    first, _ = _post(vault_server, "officer-alice", ROTATIONS, body, headers)
    assert first.status_code == 201, first.text
    with vault_server.client("officer-alice") as alice:
        assert alice.post(f"{ROTATIONS}/{first.json()['id']}/cancel").status_code == 200
    again, rid = _post(vault_server, "officer-alice", ROTATIONS, body, headers)
    _refused(vault_server, again, rid, "mfa_replayed")


def test_signature_over_a_different_body(vault_server: VaultServer) -> None:
    headers = _signed(vault_server, "officer-alice", ROTATIONS, b'{"kind":"data"}')
    response, rid = _post(vault_server, "officer-alice", ROTATIONS, b'{"kind":"kek"}', headers)
    _refused(vault_server, response, rid, "mfa_invalid")


def test_signature_by_another_officers_key(vault_server: VaultServer) -> None:
    body = b'{"kind":"data"}'
    headers = _signed(vault_server, "officer-bob", ROTATIONS, body)
    response, rid = _post(vault_server, "officer-alice", ROTATIONS, body, headers)
    _refused(vault_server, response, rid, "mfa_invalid")
    # Bob's key claiming Alice's keyid.
    alice_keyid = software_officers()["officer-alice"].keyid
    headers = _signed(vault_server, "officer-bob", ROTATIONS, body, keyid=alice_keyid)
    response, rid = _post(vault_server, "officer-alice", ROTATIONS, body, headers)
    _refused(vault_server, response, rid, "mfa_invalid")


def test_non_officers_are_still_denied_by_policy(vault_server: VaultServer) -> None:
    response, rid = _post(vault_server, "payments", ROTATIONS, b'{"kind":"data"}', {})
    assert response.status_code == 403
    assert response.json()["code"] == "policy_denied"
    assert any(e["outcome"] == "denied" for e in _audited(vault_server, rid))


def test_signed_by_the_officers_token_key_passes(vault_server: VaultServer) -> None:
    with vault_server.client("officer-alice") as alice:
        proposed = alice.post(ROTATIONS, json={"kind": "fingerprint"})
        assert proposed.status_code == 201, proposed.text
        assert alice.post(f"{ROTATIONS}/{proposed.json()['id']}/cancel").status_code == 200


def test_signed_for_another_vault_is_refused(vault_server: VaultServer) -> None:
    # Alice's token signs a proposal for the staging vault; whoever sees that request (a
    # staging operator, a request log) sends it here within the clock window. This vault's
    # nonces never saw it, and the same identity and key are registered: only the
    # authority it was signed for (Host, not a name in this vault's certificate) tells.
    rid = _rid()
    with vault_server.client("officer-alice") as alice:
        response = alice.post(
            ROTATIONS,
            json={"kind": "fingerprint"},
            headers={"host": "staging.vault.example", "x-request-id": rid},
        )
    _refused(vault_server, response, rid, "mfa_invalid")
    assert "staging.vault.example" in response.json()["detail"]


def _raw_post(vault: VaultServer, name: str, head: list[tuple[str, str]], body: bytes) -> bytes:
    """POST over the client's own TLS socket: httpx (h11) will not send two Hosts."""
    url = httpx.URL(vault.url)
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    lines = [f"POST {ROTATIONS} HTTP/1.1", *(f"{k}: {v}" for k, v in head)]
    lines += [f"content-length: {len(body)}", "connection: close", "", ""]
    with (
        socket.create_connection((url.host, url.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=url.host) as tls,
    ):
        tls.sendall("\r\n".join(lines).encode() + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def test_two_host_headers_are_refused(vault_server: VaultServer) -> None:
    # RFC 9112 3.2: a request with more than one Host is answered 400. h11 does; httptools
    # (the default parser) passed both, and the last was the @authority checked and
    # signed while Starlette's `request.url` (or a proxy) reads the first. Which vault a
    # request is for must not depend on the parser: refused, whichever comes first.
    body = b'{"kind":"fingerprint"}'
    own = httpx.URL(vault_server.url).netloc.decode()
    for hosts in (["staging.vault.example", own], [own, own]):
        rid = _rid()
        signed = _signed(vault_server, "officer-alice", ROTATIONS, body)
        head = [("host", h) for h in hosts] + list(signed.items())
        head += [("content-type", "application/json"), ("x-request-id", rid)]
        answer = _raw_post(vault_server, "officer-alice", head, body)
        status = answer.split(b"\r\n", 1)[0]
        assert status == b"HTTP/1.1 401 Unauthorized", answer
        assert b'"code":"mfa_invalid"' in answer
