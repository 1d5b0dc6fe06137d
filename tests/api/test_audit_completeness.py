"""PCI DSS 10.2: every request that reaches the app leaves one audit entry with its
outcome, refusals included, and a refused certificate is named in it. Also the client
certificate rules (one URI SAN, no CA, clientAuth) that decide a 401."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes

from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries
from tests.support.certificates import issue_odd_client
from tests.support.leakguard import record_responses
from tests.support.postgres import free_port

VISA = "4111111111111111"


def _client(vault: VaultServer, cert: Path, key: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(cert), str(key))
    return httpx.Client(
        base_url=vault.url,
        verify=context,
        timeout=10,
        event_hooks=record_responses(vault.tmp / "responses.log"),
    )


_REFUSED = {
    "two URI SANs": (["spiffe://cofre/payments", "spiffe://cofre/getnet-adapter"], {}),
    "CA:TRUE leaf": (["spiffe://cofre/payments"], {"ca": True}),
    "no clientAuth EKU": (["spiffe://cofre/payments"], {"client_auth": False}),
    "no URI SAN": ([], {}),
}


@pytest.mark.parametrize("case", list(_REFUSED))
def test_refused_certificate_is_401_and_audited_by_name(
    vault_server: VaultServer, tmp_path: Path, case: str
) -> None:
    uris, options = _REFUSED[case]
    code = "identity_ambiguous" if len(uris) > 1 else "identity_missing"
    cert_path, key_path, cert = issue_odd_client(vault_server.pki, tmp_path, "odd", uris, **options)
    rid = new_request_id()
    with _client(vault_server, cert_path, key_path) as client:
        # Authentication comes before validation: a bad body still gets 401, not 422.
        response = client.post(
            "/v1/tokenize",
            content=b"{not json",
            headers={"content-type": "application/json", "x-request-id": rid},
        )
    assert response.status_code == 401
    assert response.json()["code"] == code
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert entry["action"] == "api.request"
    assert entry["outcome"] == "denied"
    assert entry["actor"] == "unauthenticated"
    details = entry["details"]
    assert details["code"] == code
    assert details["status"] == 401
    assert details["cert_subject"] == cert.subject.rfc4514_string()
    assert details["cert_serial"] == format(cert.serial_number, "x")
    assert details["cert_sha256"] == cert.fingerprint(hashes.SHA256()).hex()


def test_validation_error_is_audited_with_the_caller(vault_server: VaultServer) -> None:
    rid = new_request_id()
    with vault_server.client("payments") as client:
        response = client.post(
            "/v1/tokenize", json={"pan": VISA, "format": 7}, headers={"x-request-id": rid}
        )
    assert response.status_code == 422
    (entry,) = request_entries(vault_server.runtime.engine, rid)
    assert (entry["action"], entry["outcome"], entry["actor"]) == (
        "api.request",
        "failed",
        "spiffe://cofre/payments",
    )
    assert entry["details"]["route"] == "/v1/tokenize"
    assert entry["details"]["code"] == "invalid_request"
    assert VISA not in json.dumps(entry)


def test_rate_limited_call_is_audited(vault_server: VaultServer) -> None:
    rids = [new_request_id() for _ in range(6)]
    with vault_server.client("limited") as client:
        statuses = [
            client.post(
                "/v1/tokenize", json={"pan": VISA, "format": "uuid"}, headers={"x-request-id": rid}
            ).status_code
            for rid in rids
        ]
    assert 429 in statuses
    written = []
    for rid, status in zip(rids, statuses, strict=True):
        entries = request_entries(vault_server.runtime.engine, rid)
        if (
            status == 429
            and not entries
            and any(e["details"].get("limit") == "refusals" for e in written)
        ):
            # Held by its refusal bucket after the first 429 of the episode: counted in
            # an `api.requests_refused` entry (tests/api/test_refusal_attacks.py).
            continue
        assert len(entries) == 1, (status, entries)
        written += entries
        if status == 429:
            assert entries[0]["outcome"] == "denied"
            # Written by the vault (its refusals carry "error") or by the API guard.
            details = entries[0]["details"]
            assert "rate_limited" in (details.get("code"), details.get("error"))


def test_key_inventory_and_ceremony_reads_are_audited(vault_server: VaultServer) -> None:
    with vault_server.client("officer-alice") as client:
        for path in ("/v1/admin/keys", "/v1/admin/keys/rotations"):
            rid = new_request_id()
            assert client.get(path, headers={"x-request-id": rid}).status_code == 200
            (entry,) = request_entries(vault_server.runtime.engine, rid)
            assert entry["outcome"] == "success"
            assert entry["actor"] == "spiffe://cofre/officer-alice"
            assert entry["details"]["route"] == path


def test_failed_evidence_export_is_recorded_as_failed(vault_server: VaultServer) -> None:
    rid = new_request_id()
    with vault_server.client("auditor") as client:
        response = client.post(
            "/v1/evidence",
            json={"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"},
            headers={"x-request-id": rid},
        )
    assert response.status_code == 422
    entries = request_entries(vault_server.runtime.engine, rid)
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("evidence.read", "success"),
        ("evidence.export", "failed"),
    ]
    assert entries[1]["details"]["error"] == "compliance_error"


def test_every_request_leaves_exactly_one_entry(vault_server: VaultServer) -> None:
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/tokenize", {"pan": VISA, "format": "pan_bin6_last4"}),
        ("POST", "/v1/tokenize", {"pan": VISA, "format": "no-such-format"}),
        ("POST", "/v1/detokenize", {"token": "9999999999999999"}),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", "/v1/tokenize", None),
        ("GET", "/v1/tokens/abc", None),
        ("POST", "/v1/lookup", {"pan": "12"}),
    ]
    with vault_server.client("payments") as client:
        for method, path, body in calls:
            rid = new_request_id()
            response = client.request(method, path, json=body, headers={"x-request-id": rid})
            entries = request_entries(vault_server.runtime.engine, rid)
            assert len(entries) == 1, (method, path, response.status_code, entries)


def test_a_request_whose_commit_fails_is_still_audited(
    tmp_path: Path, hsm_provider: HSMProvider, pg_database: str
) -> None:
    """A relay's `relay.send` entry is written, then the commit fails (a deferred
    constraint, not a retryable conflict) and nothing is sent: the entry rolled back,
    and the relay writes no failure entry of its own, so the guard must write the
    request's `api.request` entry, failed. It used to count the rolled-back entry as
    the request's and write none: the failed reveal left no audit trace."""
    routes = f"""
[relay_routes.getnet-down]
upstream = "https://127.0.0.1:{free_port()}/v1/authorize"
identities = ["spiffe://cofre/getnet-adapter"]
detokenize = ["/card/number"]
ca_bundle = "{tmp_path / "pki" / "ca.pem"}"
timeout_seconds = 2
"""
    with running_vault(tmp_path, hsm_provider, pg_database, extra_policy=routes) as vault:
        with vault.client("payments") as client:
            tokenized = client.post("/v1/tokenize", json={"pan": VISA, "format": "pan_last4"})
        assert tokenized.status_code == 200, tokenized.text
        with vault.runtime.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql"
                    " AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
                )
            )
            connection.execute(
                sa.text(
                    "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON audit_entries"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
                    ' WHEN (NEW.payload LIKE \'%"action":"relay.send"%\')'
                    " EXECUTE FUNCTION refuse_at_commit()"
                )
            )
        rid = new_request_id()
        with vault.client("getnet-adapter") as client:
            response = client.post(
                "/v1/relay/getnet-down",
                json={"card": {"number": tokenized.json()["token"]}},
                headers={"x-request-id": rid},
            )
        assert response.status_code == 503, response.text
        entries = request_entries(vault.runtime.engine, rid)
        assert [(e["action"], e["outcome"]) for e in entries] == [("api.request", "failed")]
        assert entries[0]["details"]["status"] == 503
