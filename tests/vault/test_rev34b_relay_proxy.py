"""Review 34b: the relay's check for bytes an upstream sent past its answer
(`vault.relay_client._drop_if_more_came`, review 34) reads httpx's pool, whose
connections through an egress proxy (``HTTPS_PROXY``: a CONNECT tunnel, TLS to the
upstream inside it) are built otherwise than direct ones. Through a real tunnel to a
TLS upstream that keeps its connections: an answer sent ahead is never the next
relay's, and a connection with nothing past its answer is still reused (the check
found it, rather than dropping every connection)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.pki import ensure_dev_pki
from policies.models import RelayRoute
from tests.vault.test_rev34_relay_pipelined import _AheadUpstream
from vault.relay_client import RelayClient


class _TunnelProxy:
    """An HTTP CONNECT proxy: each CONNECT opens a tunnel to its target (`targets`)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.targets: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    break
                head += chunk
            if not head.endswith(b"\r\n\r\n"):
                client.close()
                continue
            target = head.split(b" ")[1].decode()
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._server.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):  # both pumps end, each closing both (close is idempotent)
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_TunnelProxy]:
    running = _TunnelProxy()
    monkeypatch.setenv("HTTPS_PROXY", running.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield running
    running.close()


@pytest.mark.parametrize(("ahead", "tunnels"), [(True, 2), (False, 1)])
def test_the_spent_connection_check_holds_through_an_egress_proxy(
    proxy: _TunnelProxy, tmp_path: Path, ahead: bool, tunnels: int
) -> None:
    pki = ensure_dev_pki(tmp_path, identities=("payments",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    upstream = _AheadUpstream(ahead=ahead)
    plain = upstream._run
    upstream._run = lambda connection: plain(context.wrap_socket(connection, server_side=True))  # type: ignore[method-assign]
    route = RelayRoute(
        upstream=f"https://127.0.0.1:{upstream.port}/v1/authorize",
        identities=frozenset({"spiffe://cofre/getnet-adapter"}),
        ca_bundle=str(pki.ca),
        timeout_seconds=10,
    )
    client = RelayClient()
    try:
        answers = [client.send("acq", route, {"amount": "1.00"}).body for _ in range(3)]
    finally:
        client.close()
        upstream.close()
    assert answers == [{"request": 1}, {"request": 2}, {"request": 3}]
    assert len(proxy.targets) == tunnels  # all through the proxy; reused unless spent
