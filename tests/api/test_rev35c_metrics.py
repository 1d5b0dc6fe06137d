"""Review 35c: attacks on the metrics port's own HTTP server (`api.metrics`).

The listener is started in this process (no vault needed: it serves the process's
Prometheus registry). Waits are bounded and fail only on a hang."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from api.metrics import HEAD_SECONDS, start_metrics_listener
from tests.support.postgres import free_port

# How long the attack below keeps trickling before it calls the connection held for
# good: many head deadlines, so a slow machine never fails the fixed listener.
TRICKLE_LIMIT_SECONDS = 30 * HEAD_SECONDS


@pytest.fixture
def metrics_port() -> Iterator[int]:
    port = free_port()
    _provider, stop = start_metrics_listener("127.0.0.1", port)
    try:
        yield port
    finally:
        stop()


def _closed_by_peer(conn: socket.socket, wait: float) -> bool:
    """Whether the listener closed `conn` (a FIN or a reset), waiting at most `wait`."""
    readable, _, _ = select.select([conn], [], [], wait)
    if not readable:
        return False
    try:
        return conn.recv(4096) == b""
    except OSError:
        return True


def test_finding_a_head_sent_a_byte_at_a_time_is_cut_at_the_head_deadline(
    metrics_port: int,
) -> None:
    """A client sends its request head one byte now and then, inside one header line:
    the listener must close it once `HEAD_SECONDS` are spent. Before, the deadline was
    armed once per `readline`, and a buffered `readline` waits on the socket again for
    every byte with the same timeout: one 64 KiB header line held a thread for hours,
    and 16 such clients held every place of the port (no scrape answered)."""
    conn = socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
    try:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickle_until = time.monotonic() + TRICKLE_LIMIT_SECONDS
        closed = False
        while time.monotonic() < trickle_until:  # bounded: fails only on a held thread
            try:
                conn.sendall(b"a")
            except OSError:
                closed = True
                break
            if _closed_by_peer(conn, HEAD_SECONDS / 8):
                closed = True
                break
        assert closed, "a trickled request head held its connection past the head deadline"
    finally:
        conn.close()


def test_a_scrape_is_still_answered(metrics_port: int) -> None:
    """The exposition itself, after the fix: GET /metrics answers Prometheus text."""
    response = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
    assert response.status_code == 200
    assert "python_info" in response.text or "process_" in response.text
    with contextlib.suppress(Exception):
        response.close()
