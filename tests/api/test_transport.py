"""Transport findings of the outside review: no slash redirects, TLS 1.3 floor by
default, the API docs off in production, the CRL reloaded and its expiry named."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.capture import build_capture_server
from api.crl import CrlWatcher
from api.errors import CrlExpired
from api.health import build_health_server
from api.lifecycle import Readiness
from api.pki import DevPKI, revoke_clients
from api.server import TLSFiles, build_server
from cofre.settings import Settings
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_trailing_slash_is_not_redirected(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as client:
        for method, path in (("GET", "/v1/tokens/abc/"), ("POST", "/v1/tokenize/")):
            response = client.request(
                method,
                path,
                json={} if method == "POST" else None,
                headers={"host": "evil.example"},
            )
            assert response.status_code == 404, (method, path)
            assert "location" not in response.headers
            assert response.json()["code"] == "not_found"


def test_docs_are_off_by_default(vault_server: VaultServer) -> None:
    assert Settings().server.api_docs is False
    with vault_server.client("payments") as client:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert client.get(path).status_code == 404, path


def test_docs_on_when_asked(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    with (
        running_vault(tmp_path, hsm_provider, api_docs=True) as vault,
        vault.client("payments") as client,
    ):
        assert client.get("/openapi.json").json() == json.loads(COMMITTED.read_text())
        assert client.get("/docs").status_code == 200


def test_tls_1_3_is_the_default_floor(vault_server: VaultServer, tmp_path: Path) -> None:
    assert Settings().server.min_tls_version.value == "1.3"
    context = ssl.create_default_context(cafile=str(vault_server.pki.ca))
    context.load_cert_chain(
        str(vault_server.pki.client_cert("payments")), str(vault_server.pki.client_key("payments"))
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        httpx.Client(base_url=vault_server.url, verify=context) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get("/healthz")
    pki = vault_server.pki
    files = TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca)
    explicit = build_server(vault_server.runtime.app, "127.0.0.1", 1, files, min_tls_version="1.2")
    assert explicit.config.ssl is not None
    assert explicit.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2


def test_no_listener_trusts_forwarded_headers(vault_server: VaultServer) -> None:
    # uvicorn trusts X-Forwarded-For / -Proto from 127.0.0.1 by default: a peer on
    # loopback (a sidecar, anyone in the pod) would choose its own client address.
    pki = vault_server.pki
    files = TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca)
    servers = [
        build_server(vault_server.runtime.app, "127.0.0.1", 1, files),
        build_capture_server(
            vault_server.runtime.app, "127.0.0.1", 1, cert=pki.server_cert, key=pki.server_key
        ),
        build_health_server(dict, Readiness(), "127.0.0.1", 1),
    ]
    for server in servers:
        assert server.config.proxy_headers is False
        assert server.config.forwarded_allow_ips == []


async def _probe(app: Any, path: str) -> httpx.Response:
    """A request straight into the ASGI app (the listener refuses every handshake)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vault") as client:
        return await client.get(path)


def _crl(pki: DevPKI, out: Path, *, expired: bool) -> Path:
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(days=2))
        .next_update(now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=7))
        .sign(ca_key, hashes.SHA256())
    )
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out


def test_crl_is_reloaded_when_the_file_changes(tmp_path: Path, hsm_provider: HSMProvider) -> None:
    crl_path = tmp_path / "crl.pem"
    with running_vault(
        tmp_path, hsm_provider, crl=lambda pki: _crl(pki, crl_path, expired=False)
    ) as vault:
        watcher = vault.crl_watcher
        assert isinstance(watcher, CrlWatcher)
        with vault.client("payments") as client:
            assert client.get("/healthz").status_code == 200
        assert not watcher.reload_if_changed()
        revoke_clients(vault.pki, ["payments"], crl_path)
        assert watcher.reload_if_changed()
        with vault.client("payments") as client, pytest.raises(httpx.TransportError):
            client.get("/healthz")
        with vault.client("ledger") as client:
            ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["crl"] == "ok"


def test_expired_crl_fails_readiness_with_its_own_code(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    crl_path = tmp_path / "crl.pem"
    with running_vault(
        tmp_path, hsm_provider, crl=lambda pki: _crl(pki, crl_path, expired=True)
    ) as vault:
        # OpenSSL refuses everyone once the CRL is past nextUpdate (fail closed) ...
        with vault.client("payments") as client, pytest.raises(httpx.TransportError):
            client.get("/healthz")
        # ... and readiness now says why, with its own code, and so does the log.
        assert vault.crl_watcher is not None
        with pytest.raises(CrlExpired):
            vault.crl_watcher.check()
        ready = asyncio.run(_probe(vault.runtime.app, "/readyz"))
        assert ready.status_code == 503
        assert ready.json()["code"] == "crl_expired"
        assert "CRL expired" in vault.logs.getvalue()
