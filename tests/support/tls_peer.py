"""A small HTTPS server on loopback that answers every request with one canned answer:
the real TLS peer a client context under test connects to (review 35's key-log and
trust tests). Its certificate is the dev PKI's server certificate (``localhost`` and
``127.0.0.1``); with `client_ca` it asks for, and requires, a client certificate from
that CA. Its own context is `ssl.SSLContext`, which writes no key log: whatever a test
finds in ``SSLKEYLOGFILE``'s file came from the client it drives."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from api.pki import DevPKI
from tests.support.https_server import LoopbackHttps


@dataclass
class TlsPeer(LoopbackHttps):
    pki: DevPKI
    client_ca: Path | None = None
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    # Another certificate and key than the PKI's server pair (a name the client dials
    # is not on it, say).
    cert: Path | None = None
    key: Path | None = None
    # (method, path) of each request that arrived whole.
    received: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def start(self) -> None:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                peer.received.append((self.command, self.path))
                self.send_response(peer.status)
                self.send_header("content-type", peer.content_type)
                self.send_header("content-length", str(len(peer.body)))
                self.end_headers()
                self.wfile.write(peer.body)

            do_GET = do_POST = _answer  # noqa: N815 - BaseHTTPRequestHandler's names

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            str(self.cert or self.pki.server_cert), str(self.key or self.pki.server_key)
        )
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.client_ca))
        self._serve(Handler, context)


@contextmanager
def running_peer(pki: DevPKI, **answer: object) -> Iterator[TlsPeer]:
    """A started `TlsPeer` of `pki` (keyword arguments: its fields), stopped after."""
    peer = TlsPeer(pki, **answer)  # type: ignore[arg-type]
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def key_log_secrets(path: Path) -> list[str]:
    """The secret lines of the key log at `path` (none when it does not exist); Python
    writes a comment line as a context opens the file, never a secret."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]
