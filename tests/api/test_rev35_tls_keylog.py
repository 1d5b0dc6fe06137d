"""Review 35: the vault's own listeners, the mTLS API and the capture listener, write no
TLS key log when ``SSLKEYLOGFILE`` is set in their environment.

uvicorn makes their contexts with `ssl.SSLContext`, which reads no environment (only
`ssl.create_default_context` and urllib3 copy ``SSLKEYLOGFILE`` into a context): they
wrote nothing before review 35 either, and these tests keep it so if uvicorn, or
`api.server`, ever builds them otherwise. Each server is built (its context made)
with the variable set, and a client whose own context writes nothing connects to it.
The clients Cofre builds are pinned in tests/cofre/test_rev35_tls_keylog.py."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from api.capture import build_capture_server
from api.lifecycle import ManagedServer
from api.pki import DevPKI, ensure_dev_pki
from api.server import BackgroundServer, TLSFiles, build_server
from tests.support.postgres import free_port
from tests.support.tls_peer import key_log_secrets

WAIT = 20.0  # a bound on a hang, never a timing assertion


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("rev35-listeners"), identities=("payments",))


@pytest.fixture
def keylog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tls-secrets.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    return path


@contextmanager
def _serving(server: ManagedServer) -> Iterator[None]:
    background = BackgroundServer(server)
    background.start()
    try:
        yield
    finally:
        background.stop()


def _exchange(pki: DevPKI, port: int, *, client: str | None) -> bytes:
    """One request over TLS to 127.0.0.1:`port` (as `client`, or with no client
    certificate) with a context that reads no environment; the answer's first bytes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(pki.client_cert(client)), str(pki.client_key(client)))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(12)


def test_the_mtls_listener_writes_no_key_log(pki: DevPKI, keylog: Path) -> None:
    port = free_port()
    server = build_server(
        FastAPI(),
        "127.0.0.1",
        port,
        TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca),
        http_protocol="h11",
    )
    with _serving(server):
        assert _exchange(pki, port, client="payments").startswith(b"HTTP/1.1")
    assert key_log_secrets(keylog) == []


def test_the_capture_listener_writes_no_key_log(pki: DevPKI, keylog: Path) -> None:
    port = free_port()
    server = build_capture_server(
        FastAPI(), "127.0.0.1", port, cert=pki.server_cert, key=pki.server_key
    )
    with _serving(server):
        assert _exchange(pki, port, client=None).startswith(b"HTTP/1.1")
    assert key_log_secrets(keylog) == []
