"""Session 37 (http37): client certificates for the wrong purpose, over real TLS. The
vault's own server certificate (serverAuth only) presented as a client's, a payments
certificate that expired an hour ago, and one with ``CA:TRUE`` (an intermediate as a
client) naming payments: none may be served as payments. Each is refused in the
handshake or answered ``401`` problem+json, never a 2xx or a 500."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import VaultServer
from tests.support.certificates import issue_odd_client

PAYMENTS = "spiffe://cofre/payments"


def _served_as(vault: VaultServer, cert: Path, key: Path) -> httpx.Response | None:
    """What `/v1/tokens/x` answers to `cert` (None: the handshake refused it)."""
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(cert), str(key))
    try:
        with httpx.Client(base_url=vault.url, verify=context, timeout=20) as client:
            return client.post("/v1/detokenize-masked", json={"token": "4111111111111111"})
    except httpx.TransportError:
        return None


def _refused(answer: httpx.Response | None) -> None:
    if answer is None:
        return
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


def test_the_server_s_own_certificate_is_no_client_s(vault_server: VaultServer) -> None:
    """Held: its EKU is serverAuth only; OpenSSL's client purpose check refuses it."""
    _refused(_served_as(vault_server, vault_server.pki.server_cert, vault_server.pki.server_key))


@pytest.mark.parametrize("odd", ["expired", "ca"])
def test_an_expired_or_ca_certificate_naming_payments_is_not_payments(
    vault_server: VaultServer, tmp_path: Path, odd: str
) -> None:
    """Held: an expired certificate fails the handshake; a ``CA:TRUE`` one is refused."""
    cert, key, _ = issue_odd_client(
        vault_server.pki, tmp_path, "payments", [PAYMENTS], ca=odd == "ca", expired=odd == "expired"
    )
    _refused(_served_as(vault_server, cert, key))


def test_the_probe_serves_a_good_certificate(vault_server: VaultServer) -> None:
    """The control: payments' own certificate is served (the refusals above are not the
    probe's failure)."""
    pki = vault_server.pki
    answer = _served_as(vault_server, pki.client_cert("payments"), pki.client_key("payments"))
    assert answer is not None
    assert answer.status_code != 401, answer.text
