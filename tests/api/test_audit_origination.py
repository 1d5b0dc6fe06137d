"""PCI DSS 10.2.2 over real mutual TLS: every entry of an API request names where it
came from, the TCP peer's address and the SHA-256 of the client certificate it
presented (`source`), as the entry of a refused certificate already named it; a
browser's capture entries name its address. A forwarded header is never believed."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cofre.settings import CaptureSettings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries
from tests.support.certificates import issue_odd_client
from tests.support.postgres import free_port
from vault.capture import CaptureSessionRequest
from vault.service import CallContext

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
SHOP = "https://shop.example"


def _sha256(pem_path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


def _source(vault: VaultServer, name: str) -> dict[str, str]:
    return {"address": "127.0.0.1", "certificate": _sha256(vault.pki.client_cert(name))}


def _post(vault: VaultServer, name: str, path: str, body: dict[str, Any]) -> tuple[int, str]:
    rid = new_request_id()
    with vault.client(name) as client:
        # A forged forwarding header is the caller's own text: never the address.
        headers = {"x-request-id": rid, "x-forwarded-for": "10.9.9.9"}
        status = client.post(path, json=body, headers=headers).status_code
    return status, rid


def test_tokenize_detokenize_and_a_denial_name_the_address_and_certificate(
    vault_server: VaultServer,
) -> None:
    status, rid = _post(vault_server, "payments", "/v1/tokenize", {"pan": VISA, "format": "uuid"})
    assert status == 200
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert entry["action"] == "tokenize"
    assert entry["source"] == _source(vault_server, "payments")
    token = entry["token_id"]
    assert token

    with vault_server.client("payments") as client:
        issued = client.post("/v1/tokenize", json={"pan": VISA, "format": "uuid"}).json()
    status, rid = _post(vault_server, "stranger", "/v1/detokenize", {"token": issued["token"]})
    assert status == 403
    (denied,) = request_entries(vault_server.runtime.engine, rid)
    assert denied["outcome"] == "denied"
    assert denied["source"] == _source(vault_server, "stranger")

    status, rid = _post(
        vault_server, "payments", "/v1/detokenize-masked", {"token": issued["token"]}
    )
    assert status == 200
    (reveal,) = request_entries(vault_server.runtime.engine, rid)
    assert reveal["source"] == _source(vault_server, "payments")


def test_each_entry_of_a_batch_names_the_source(vault_server: VaultServer) -> None:
    items = [{"pan": pan, "format": "uuid"} for pan in (VISA, MASTERCARD) * 5]
    status, rid = _post(vault_server, "payments", "/v1/tokenize/batch", {"items": items})
    assert status == 200
    entries = request_entries(vault_server.runtime.engine, rid)
    assert len(entries) == len(items)
    assert {str(e["source"]) for e in entries} == {str(_source(vault_server, "payments"))}


def test_a_guard_entry_names_the_source_and_a_refused_certificate_matches_it(
    vault_server: VaultServer, tmp_path: Path
) -> None:
    status, rid = _post(vault_server, "payments", "/v1/tokenize", {"pan": VISA, "format": 7})
    assert status == 422
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert (entry["action"], entry["source"]) == ("api.request", _source(vault_server, "payments"))

    cert_path, key_path, _ = issue_odd_client(vault_server.pki, tmp_path, "odd", [])
    context = ssl.create_default_context(cafile=str(vault_server.pki.ca))
    context.load_cert_chain(str(cert_path), str(key_path))
    rid = new_request_id()
    with httpx.Client(base_url=vault_server.url, verify=context, timeout=10) as client:
        refused = client.post("/v1/tokenize", json={}, headers={"x-request-id": rid})
    assert refused.status_code == 401
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert entry["source"] == {"address": "127.0.0.1", "certificate": _sha256(cert_path)}
    assert entry["source"]["certificate"] == entry["details"]["cert_sha256"]


@pytest.fixture(scope="module")
def capture_vault(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[VaultServer]:
    settings = CaptureSettings(port=free_port())
    with running_vault(tmp_path_factory.mktemp("capture"), hsm_provider, capture=settings) as vault:
        yield vault


def _capture_entries(vault: VaultServer, after: int) -> list[tuple[str, str]]:
    with vault.runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload FROM audit_entries WHERE id > :after ORDER BY id"),
            {"after": after},
        ).scalars()
        return [row for row in rows if '"action":"capture' in row]


def _last_id(vault: VaultServer) -> int:
    with vault.runtime.engine.connect() as connection:
        return int(
            connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM audit_entries")).scalar()
        )


def test_capture_entries_name_the_browsers_address(capture_vault: VaultServer) -> None:
    payments = CallContext("spiffe://cofre/payments", "req-test")
    session = capture_vault.runtime.service.create_capture_session(
        payments, CaptureSessionRequest(origin=SHOP, formats=("pan_bin6_last4",))
    )
    after = _last_id(capture_vault)
    url = f"/v1/capture/{session.session_id}"
    forged = {"origin": SHOP, "x-forwarded-for": "10.9.9.9"}
    with capture_vault.capture_client() as client:
        wrong = client.post(url, json={"number": VISA, "secret": "cofre_cs_x"}, headers=forged)
        unknown = client.post(
            "/v1/capture/cs_" + "q" * 32, json={"number": VISA, "secret": "x"}, headers=forged
        )
        body = {"number": VISA, "expiry": "12/29", "secret": session.secret}
        good = client.post(url, json=body, headers=forged)
    assert (wrong.status_code, unknown.status_code, good.status_code) == (401, 401, 200)
    entries = [json.loads(row) for row in _capture_entries(capture_vault, after)]
    assert {e["outcome"] for e in entries} >= {"success", "failed"}
    assert len(entries) >= 3  # the two refusals and the capture
    for entry in entries:
        assert entry["source"] == {"address": "127.0.0.1"}, entry
        assert "10.9.9.9" not in json.dumps(entry)


def test_an_entry_made_without_a_call_context_names_the_request_source(
    vault_server: VaultServer,
) -> None:
    """Officer routes (key ceremonies, custody, the key inventory) write their entries
    without a `CallContext`: they take the source of the request being served from its
    trail. Here a service's certificate asks for the key inventory and is denied."""
    for path in ("/v1/admin/keys", "/v1/admin/keys/rotations", "/v1/admin/keys/rotations/c1"):
        rid = new_request_id()
        with vault_server.client("payments") as client:
            assert client.get(path, headers={"x-request-id": rid}).status_code == 403
        # Its request id too (before session 30 these read-only routes wrote "").
        (denied,) = request_entries(vault_server.runtime.engine, rid)
        assert (denied["action"], denied["outcome"]) == ("key.admin", "denied")
        assert denied["source"] == _source(vault_server, "payments")
