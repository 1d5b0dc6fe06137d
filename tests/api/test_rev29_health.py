"""Review 29: the mTLS listener's health routes, attacked with one stolen client
certificate at a time. `/healthz` and `/readyz` are served without an identity and
without an audit entry (docs/api.md), so they were the one place a certificate's
requests met neither its policy, its refusal bucket nor the CRL of open connections.

A test named ``test_finding_...`` FAILED on the reviewed main (its docstring: severity,
what the attacker gained, the fix)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from api.health import PROBE_BURST, PROBE_PER_SECOND
from api.pki import DevPKI, revoke_clients
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_crl import _closed_by_peer, _connect, _crl
from tests.support.audit_trail import new_request_id, request_entries

PROBES = 60


def _get(sock: ssl.SSLSocket, path: str, request_id: str = "") -> http.client.HTTPResponse:
    """GET `path` on `sock` (keep-alive) and read the whole answer."""
    rid = f"X-Request-Id: {request_id}\r\n" if request_id else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: vault\r\n{rid}\r\n".encode())
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    response.body = response.read()  # type: ignore[attr-defined]
    return response


@pytest.fixture
def hsm_checks(vault_server: VaultServer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times readiness called the HSM (its health check, a C_GenerateRandom on
    the token's session), counted on the vault's own provider; and readiness's clock
    held still, so what is counted does not depend on how fast the machine is."""
    provider = vault_server.runtime.provider
    calls = [0]
    real = provider.health_check

    def counted() -> None:
        calls[0] += 1
        real()

    monkeypatch.setattr(provider, "health_check", counted)
    now = [1000.0]
    probes = getattr(vault_server.runtime.app.state, "ready_probes", None)
    if probes is not None:  # the fix's; the reviewed main had no such thing to hold
        monkeypatch.setattr(probes, "clock", lambda: now[0])
    return calls


def test_finding_a_flood_of_readiness_probes_is_not_a_flood_of_hsm_and_database_calls(
    vault_server: VaultServer, hsm_checks: list[int]
) -> None:
    """Medium (fixed). Any certificate the CA issued, also one whose identity the policy
    does not know (every other request of such a caller is refused, 20 then one a
    second), could send `/readyz` without end: each ran every readiness check (an HSM
    call on the token's one session, a database round trip, the key registry's HSM key
    listing, the witness lag query) and wrote nothing anywhere but the access log, where
    it is not metered either. 60 probes were 60 HSM calls; at ~4 ms of a worker's HSM
    and database each, a few connections kept a node's one SoftHSM2 session busy for
    every tokenize of every other caller, with no trace in the audit log. Now each
    caller (identity, or certificate) runs the checks itself for a burst of probes, then
    once a second; its other probes get the newest run's answer."""
    with _connect(vault_server, "stranger") as sock:
        answers = [_get(sock, "/readyz") for _ in range(PROBES)]
    assert {a.status for a in answers} == {200}
    assert {json.loads(a.body)["status"] for a in answers} == {"ready"}  # type: ignore[attr-defined]
    # The burst (`api.health.PROBE_BURST`, 10), however many probes: the clock stands still.
    assert hsm_checks[0] <= 10, hsm_checks[0]


def test_a_flooding_caller_leaves_other_callers_their_own_fresh_probes(
    vault_server: VaultServer, hsm_checks: list[int]
) -> None:
    """The allowance is each caller's: one certificate that spends its own burst does
    not make another's probe (a load balancer's) answer from an old run."""
    with _connect(vault_server, "limited") as sock:
        for _ in range(PROBES):
            assert _get(sock, "/readyz").status == 200
    assert hsm_checks[0] == PROBE_BURST
    with _connect(vault_server, "ledger") as sock:
        assert _get(sock, "/readyz").status == 200
    assert hsm_checks[0] == PROBE_BURST + 1


def test_a_callers_allowance_comes_back_with_time(
    vault_server: VaultServer, hsm_checks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = vault_server.runtime.app.state.ready_probes
    now = [5000.0]
    monkeypatch.setattr(probes, "clock", lambda: now[0])
    with _connect(vault_server, "store") as sock:
        for _ in range(PROBES):
            _get(sock, "/readyz")
        assert hsm_checks[0] == PROBE_BURST
        now[0] += 3 / PROBE_PER_SECOND
        for _ in range(PROBES):
            _get(sock, "/readyz")
    assert hsm_checks[0] == PROBE_BURST + 3


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
def test_finding_a_revoked_certificates_open_connection_is_refused_on_the_health_routes_too(
    tmp_path: Path, hsm_provider: HSMProvider, path: str
) -> None:
    """Low (fixed). Revocation takes effect on the next request of an open keep-alive
    connection (docs/threat-model.md, boundary 1), except on the health routes, where
    the guard skipped authentication and with it the CRL check: a certificate revoked
    while its pooled connection was open kept that connection, and with it `/readyz`'s
    HSM and database calls, for as long as it kept sending (the keep-alive timeout is
    re-armed by every request). Now a revoked certificate is refused there too: 401
    ``certificate_revoked``, audited with the certificate's name, connection closed."""
    crl_path = tmp_path / "crl.pem"
    crl: Callable[[DevPKI], Path] = lambda pki: _crl(pki, crl_path)  # noqa: E731
    with running_vault(tmp_path, hsm_provider, crl=crl) as vault:
        assert vault.crl_watcher is not None
        cert = x509.load_pem_x509_certificate(vault.pki.client_cert("payments").read_bytes())
        with _connect(vault, "payments") as sock:
            assert _get(sock, path).status == 200
            revoke_clients(vault.pki, ["payments"], crl_path)
            assert vault.crl_watcher.reload_if_changed()
            rid = new_request_id()
            after = _get(sock, path, rid)
            assert after.status == 401, after.body  # type: ignore[attr-defined]
            assert json.loads(after.body)["code"] == "certificate_revoked"  # type: ignore[attr-defined]
            assert after.will_close
            assert _closed_by_peer(sock)
        (entry,) = request_entries(vault.runtime.engine, rid)
        assert (entry["action"], entry["outcome"], entry["actor"]) == (
            "api.request",
            "denied",
            "unauthenticated",
        )
        assert entry["details"]["code"] == "certificate_revoked"
        assert entry["details"]["cert_sha256"] == cert.fingerprint(hashes.SHA256()).hex()
        # Another certificate's probes on the same vault are answered as before.
        with _connect(vault, "ledger") as sock:
            assert _get(sock, path).status == 200
