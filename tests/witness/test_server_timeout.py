"""The witness's listener does not let a client hold a connection by saying nothing
(slowloris): each read from a client has a timeout (`READ_TIMEOUT`), after which the
connection is closed. Before the fix the handler had none: a client that connected
and sent nothing, or part of a body, held a thread for as long as it liked."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from api.pki import ensure_dev_pki
from audit.note import CosignerKey
from witness.server import READ_TIMEOUT, WitnessConfig, WitnessServer

# How long the test waits for the server to close a connection before calling it held
# open: a guard against a hang, far above the 1 s read timeout the tests give the server.
GUARD = 20.0


def _config(directory: Path) -> WitnessConfig:
    key_file = directory / "witness.key"
    key_file.write_text(CosignerKey.generate("witness.test/w1").encode() + "\n")
    key_file.chmod(0o600)
    logs_file = directory / "logs.vkeys"
    log_key = CosignerKey.generate("log.example").verifier_key()
    logs_file.write_text(log_key.encode() + "\n")
    return WitnessConfig(key_file, directory / "state.sqlite3", logs_file, port=0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WitnessServer]:
    running = WitnessServer(_config(tmp_path), read_timeout=1.0)
    running.start()
    yield running
    running.stop()


def _closed_by_server(connection: socket.socket) -> bool:
    """Whether the server closes `connection` (end of file) with nothing to say first."""
    connection.settimeout(GUARD)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False  # still open after the guard: the server is waiting for good
    finally:
        connection.close()


def test_the_witness_times_out_reads_by_default(tmp_path: Path) -> None:
    running = WitnessServer(_config(tmp_path))
    running.start()  # stop() waits for the serving loop to end: it must have begun
    try:
        assert running._http.RequestHandlerClass.timeout == READ_TIMEOUT == 30
    finally:
        running.stop()


def test_a_silent_connection_is_closed(server: WitnessServer) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port))
    assert _closed_by_server(silent)


def test_a_connection_that_sends_part_of_its_body_is_closed(server: WitnessServer) -> None:
    partial = socket.create_connection(("127.0.0.1", server.port))
    partial.sendall(
        b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 100\r\n\r\nold 0\n"
    )
    assert _closed_by_server(partial)


def test_the_witness_answers_while_a_silent_connection_waits(server: WitnessServer) -> None:
    silent = socket.create_connection(("127.0.0.1", server.port))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(1024):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"ok\n")
    finally:
        silent.close()


def test_a_silent_connection_does_not_stop_a_tls_witness(tmp_path: Path) -> None:
    """With TLS, the handshake ran in accept(), in the one thread that accepts
    connections and without a timeout: one client that connected and sent nothing
    stopped the whole witness. It runs in the connection's thread now, under the read
    timeout."""
    pki = ensure_dev_pki(tmp_path / "pki", identities=())
    config = replace(_config(tmp_path), tls_cert=pki.server_cert, tls_key=pki.server_key)
    running = WitnessServer(config, read_timeout=1.0)
    running.start()
    silent = socket.create_connection(("127.0.0.1", running.port))
    try:
        verify = ssl.create_default_context(cafile=str(pki.ca))
        answer = httpx.get(
            f"https://127.0.0.1:{running.port}/healthz", verify=verify, timeout=GUARD
        )
        assert answer.status_code == 200
        assert _closed_by_server(silent)
    finally:
        silent.close()  # else a stuck accept loop would never see stop()
        running.stop()


def test_a_witness_never_started_stops_at_once(tmp_path: Path) -> None:
    """`stop()` waited for a serving loop that never began (the witness review)."""
    running = WitnessServer(_config(tmp_path))
    stopper = threading.Thread(target=running.stop, daemon=True)
    stopper.start()
    stopper.join(20)
    assert not stopper.is_alive()
