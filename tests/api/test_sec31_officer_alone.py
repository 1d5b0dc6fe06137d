"""Session 31 (a security officer's review of dual control): one officer acting alone,
and services reaching the ceremonies. Attacks that hold, kept because nothing else
runs them through the API:

- the proposer approves their own proposal with a second certificate the CA issued them
  (same identity, another key and serial): dual control counts identities, and both
  certificates name one;
- every route under ``/v1/admin/keys`` (read from the OpenAPI document, so a route
  added later is swept too) refuses each identity the policy does not grant
  ``key_admin`` (services, the auditor), audited, and leaves a pending ceremony as it was.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from api.pki import DevPKI, issue_client
from tests.api.conftest import VaultServer
from tests.api.test_forged_ceremony_rows import ALICE, ROTATIONS, _denials

ADMIN = "/v1/admin/keys"
# A well-formed body for each POST (a malformed one is refused 422 before the caller is
# asked about, as on every route).
_BODIES = {
    ROTATIONS: {"kind": "data"},
    f"{ADMIN}/custody": {"statement": "{}", "signature": "AAAA"},
}


def _propose(vault_server: VaultServer, kind: str = "fingerprint") -> str:
    with vault_server.client("officer-alice") as alice:
        proposed = alice.post(ROTATIONS, json={"kind": kind})
    assert proposed.status_code == 201, proposed.text
    return str(proposed.json()["id"])


def _cancel(vault_server: VaultServer, ceremony: str) -> None:
    with vault_server.client("officer-alice") as alice:
        assert alice.post(f"{ROTATIONS}/{ceremony}/cancel").status_code == 200


def test_the_proposer_s_second_certificate_cannot_approve(
    vault_server: VaultServer, tmp_path: Path
) -> None:
    """Alice proposes with her certificate, then approves with another the CA issued her
    (a new key pair and serial, the same identity), signed by her own token."""
    second = DevPKI(tmp_path / "second")
    (second.root / "clients").mkdir(parents=True)
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(vault_server.pki.root / name, second.root / name)
    issue_client(second, "officer-alice")
    assert second.client_cert("officer-alice").read_bytes() != (
        vault_server.pki.client_cert("officer-alice").read_bytes()
    )
    ceremony = _propose(vault_server)
    try:
        with vault_server.client("officer-alice", pki=second) as alice_again:
            approved = alice_again.post(f"{ROTATIONS}/{ceremony}/approve")
            shown = alice_again.get(f"{ROTATIONS}/{ceremony}").json()
        assert (approved.status_code, approved.json()["code"]) == (409, "ceremony_invalid")
        assert "proposer cannot approve" in approved.json()["detail"]
        assert (shown["state"], shown["approvers"]) == ("pending", [])
        assert _denials(vault_server, ceremony) == ["the proposer cannot approve"]
    finally:
        _cancel(vault_server, ceremony)


def _admin_routes() -> list[tuple[str, str]]:
    """Every operation under ``/v1/admin/keys`` in docs/openapi.json, which
    tests/api/test_openapi.py keeps equal to the app's own."""
    spec = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
    return [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path.startswith(ADMIN)
        for method in operations
    ]


@pytest.mark.parametrize("name", ["payments", "ledger", "store", "getnet-adapter", "auditor"])
def test_no_key_admin_route_answers_an_identity_without_key_admin(
    vault_server: VaultServer, name: str
) -> None:
    routes = _admin_routes()
    # The ceremony routes and the custody routes, at least: a sweep that found none
    # would pass for nothing.
    assert {path for _, path in routes} >= {
        ADMIN,
        ROTATIONS,
        f"{ROTATIONS}/{{ceremony_id}}",
        f"{ROTATIONS}/{{ceremony_id}}/approve",
        f"{ROTATIONS}/{{ceremony_id}}/cancel",
        f"{ADMIN}/custody",
        f"{ADMIN}/custody/statement",
    }, routes
    ceremony = _propose(vault_server)
    try:
        with vault_server.client(name) as service:
            for method, path in routes:
                answer = service.request(
                    method,
                    path.replace("{ceremony_id}", ceremony),
                    json=_BODIES.get(path) if method == "POST" else None,
                )
                rid = answer.headers["x-request-id"]
                assert (answer.status_code, answer.json()["code"]) == (403, "policy_denied"), (
                    method,
                    path,
                    answer.text,
                )
                assert ceremony not in answer.text
                assert _denied(vault_server, rid), (method, path)
        with vault_server.client("officer-bob") as bob:
            shown = bob.get(f"{ROTATIONS}/{ceremony}").json()
        assert (shown["state"], shown["proposer"], shown["approvers"]) == ("pending", ALICE, [])
    finally:
        _cancel(vault_server, ceremony)


def _denied(vault_server: VaultServer, rid: str) -> bool:
    """Whether request `rid` left a denial in the audit log (a bounded wait: the entry of
    a refused request may land just after its answer)."""
    deadline = time.monotonic() + 10
    while True:
        with vault_server.runtime.engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT payload FROM audit_entries WHERE payload LIKE :p"),
                {"p": f'%"request_id":"{rid}"%'},
            ).scalars()
            if any(json.loads(row)["outcome"] == "denied" for row in rows):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
