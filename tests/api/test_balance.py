"""A worker busier than another of its node answers one request with ``Connection:
close`` so the client's next connection is hashed afresh (`api.balance`), and its count
of requests in flight follows what its connections do (issue 21: with a handful of
keep-alive connections the kernel's SO_REUSEPORT hash left one worker of two idle)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from api.balance import (
    COOLDOWN_SECONDS,
    NOT_LISTENING,
    SLOTS,
    TAU_SECONDS,
    WorkerLoads,
    node_counts,
)
from api.server import BackgroundServer, TLSFiles, build_server
from tests.api.conftest import VaultServer
from tests.support.postgres import free_port
from tests.support.wire import closed_by_server, mtls_connect, read_response


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _array(*in_flight: float) -> list[float]:
    """A node's shared array: each worker's requests in flight (or NOT_LISTENING), on
    average that many since the clock's start."""
    return [slot for value in in_flight for slot in (value, max(value, 0.0), Clock().now)]


def _loads(counts: list[float], index: int = 0) -> tuple[WorkerLoads, Clock]:
    clock = Clock()
    loads = WorkerLoads(counts, index, clock=clock)
    loads.listening(True)
    return loads, clock


def _hold(loads: WorkerLoads, clock: Clock, requests: int, seconds: float) -> None:
    """`requests` more in flight, held for `seconds`."""
    for _ in range(requests):
        loads.started()
    clock.now += seconds


def test_a_new_array_marks_every_worker_not_listening() -> None:
    class Context:
        @staticmethod
        def RawArray(kind: str, size: int) -> list[float]:  # noqa: N802 - multiprocessing's
            assert kind == "d"
            return [0.0] * size

    counts = node_counts(Context(), 3)
    assert counts[::SLOTS] == [NOT_LISTENING] * 3


def test_a_worker_busier_on_average_closes_one_connection_per_cooldown() -> None:
    counts = _array(NOT_LISTENING, 0)
    loads, clock = _loads(counts)
    _hold(loads, clock, 1, 5 * TAU_SECONDS)
    assert not loads.should_close()  # 1 against 0: even enough
    _hold(loads, clock, 1, 5 * TAU_SECONDS)
    assert counts[0] == 2
    assert loads.should_close()  # ~2 against 0
    assert not loads.should_close()  # within the cooldown
    clock.now += COOLDOWN_SECONDS
    assert loads.should_close()


def test_each_close_is_counted() -> None:
    counts = _array(NOT_LISTENING, 0)
    clock = Clock()
    closes: list[None] = []
    loads = WorkerLoads(counts, 0, clock=clock, on_close=lambda: closes.append(None))
    loads.listening(True)
    _hold(loads, clock, 3, 5 * TAU_SECONDS)
    assert loads.should_close()
    assert not loads.should_close()  # within the cooldown: not closed, not counted
    assert len(closes) == 1


def test_a_moment_s_swing_closes_nothing() -> None:
    """On an evenly spread node the requests in flight swing by a few from moment to
    moment: a burst that has just arrived does not move the average past the margin."""
    counts = _array(NOT_LISTENING, 4)
    loads, clock = _loads(counts)
    _hold(loads, clock, 4, 5 * TAU_SECONDS)
    _hold(loads, clock, 4, TAU_SECONDS / 20)  # 8 against 4, for 50 ms
    assert not loads.should_close()
    clock.now += 2 * TAU_SECONDS  # and held: the average follows
    assert loads.should_close()


def test_an_idle_worker_s_average_decays_without_it_writing() -> None:
    """A worker that has had no request for a while publishes nothing; the others see
    its average fall all the same (from its last count and when it was set)."""
    counts = _array(NOT_LISTENING, 0)
    counts[3:6] = [0.0, 6.0, Clock().now]  # was busy, idle since the clock's start
    loads, clock = _loads(counts)
    _hold(loads, clock, 2, 0.1)
    assert not loads.should_close()  # the other's average is still high
    clock.now += 5 * TAU_SECONDS
    assert loads.should_close()


def test_the_least_busy_worker_is_the_reference() -> None:
    counts = _array(NOT_LISTENING, 5, 2, NOT_LISTENING)
    loads, clock = _loads(counts)
    _hold(loads, clock, 3, 5 * TAU_SECONDS)
    assert not loads.should_close()  # 3 against 2
    _hold(loads, clock, 1, 5 * TAU_SECONDS)
    assert loads.should_close()  # 4 against 2


def test_a_worker_that_does_not_listen_is_left_out() -> None:
    """The kernel sends a starting or stopped worker nothing: closing connections
    towards it would only make clients reconnect to the same worker."""
    counts = _array(NOT_LISTENING, NOT_LISTENING)
    loads, clock = _loads(counts)
    _hold(loads, clock, 10, 5 * TAU_SECONDS)
    assert not loads.should_close()


def test_a_worker_not_listening_never_closes_and_publishes_nothing() -> None:
    counts = _array(NOT_LISTENING, 0)
    clock = Clock()
    loads = WorkerLoads(counts, 0, clock=clock)
    _hold(loads, clock, 2, 5 * TAU_SECONDS)
    assert counts[0] == NOT_LISTENING
    assert not loads.should_close()
    loads.listening(True)
    assert counts[0] == 2
    loads.listening(False)
    assert counts[0] == NOT_LISTENING


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=60))
def test_the_published_count_is_what_is_in_flight(steps: list[tuple[bool, float]]) -> None:
    counts = _array(NOT_LISTENING, 0)
    loads, clock = _loads(counts)
    in_flight = 0
    for start, seconds in steps:
        clock.now += seconds
        if start:
            loads.started()
            in_flight += 1
        else:
            loads.finished()
            in_flight = max(0, in_flight - 1)
        assert counts[0] == in_flight
        assert 0.0 <= counts[1] <= max(in_flight, 60)  # an average of counts seen


# Through a real mutual-TLS listener, both HTTP parsers.

WAIT = 20.0
PROTOCOLS = pytest.mark.parametrize("http", ["httptools", "h11"])


@contextmanager
def _server(
    vault: VaultServer, loads: WorkerLoads, http: str, app: FastAPI | None = None
) -> Iterator[int]:
    pki = vault.pki
    port = free_port()
    server = BackgroundServer(
        build_server(
            app or vault.runtime.app,
            "127.0.0.1",
            port,
            TLSFiles(cert=pki.server_cert, key=pki.server_key, ca_bundle=pki.ca),
            http_protocol=http,
            loads=loads,
        )
    )
    server.start()
    try:
        yield port
    finally:
        server.stop()


@contextmanager
def _busier(vault: VaultServer, http: str) -> Iterator[tuple[int, list[float]]]:
    """A listener of worker 0, serving and already one request busier than worker 1
    (idle), its averages following at once: its port and the node's array."""
    counts = _array(NOT_LISTENING, 0)
    loads = WorkerLoads(counts, 0, tau=1e-6)
    with _server(vault, loads, http) as port:
        assert _until(lambda: counts[0] == 0)
        loads.started()  # another request of this worker's, still running
        yield port, counts


def _connect(vault: VaultServer, port: int) -> ssl.SSLSocket:
    return mtls_connect(vault.pki, port, timeout=WAIT)


def _exchange(conn: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """Send GET /healthz; the whole answer's head (lower case) and body."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
    head, body = read_response(conn)
    return head.lower(), body


_closed = closed_by_server


def _until(condition: object, seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@PROTOCOLS
def test_an_even_worker_keeps_its_connections(vault_server: VaultServer, http: str) -> None:
    counts = _array(NOT_LISTENING, 0)
    loads = WorkerLoads(counts, 0, tau=1e-6)  # averages follow at once
    with _server(vault_server, loads, http) as port:
        assert _until(lambda: counts[0] == 0)  # serving: published
        conn = _connect(vault_server, port)
        try:
            for _ in range(3):
                head, _ = _exchange(conn)
                assert head.startswith(b"http/1.1 200")
                assert b"connection: close" not in head
            assert counts[0] == 0
        finally:
            conn.close()
    assert counts[0] == NOT_LISTENING  # stopped: the other workers leave it out


@PROTOCOLS
def test_a_busier_worker_answers_in_full_then_closes(vault_server: VaultServer, http: str) -> None:
    with _busier(vault_server, http) as (port, counts):
        conn = _connect(vault_server, port)
        try:
            head, body = _exchange(conn)
            assert head.startswith(b"http/1.1 200")  # answered first, in full
            assert b'"status"' in body
            assert head.count(b"connection: close") == 1
            assert _closed(conn)
        finally:
            conn.close()
        # The closed connection's request is no longer counted; the other one is.
        assert _until(lambda: counts[0] == 1)
        # The cooldown: the next busy request keeps its connection.
        conn = _connect(vault_server, port)
        try:
            head, _ = _exchange(conn)
            assert b"connection: close" not in head
        finally:
            conn.close()


@PROTOCOLS
def test_a_request_still_being_sent_is_not_counted(vault_server: VaultServer, http: str) -> None:
    """Until its body is in, a request costs the worker nothing: counted, one
    certificate's heads with bodies trickled until the body deadline would make a worker
    look busy at no cost, and have it close other clients' connections (herding them
    onto whichever worker holds the fewest such requests)."""
    counts = _array(NOT_LISTENING, 0)
    loads = WorkerLoads(counts, 0, tau=1e-6)  # averages follow at once
    with _server(vault_server, loads, http) as port:
        assert _until(lambda: counts[0] == 0)
        held = [_connect(vault_server, port) for _ in range(3)]
        try:
            for conn in held:
                conn.sendall(_SLOW_HEAD)
            client = _connect(vault_server, port)
            try:
                head, _ = _exchange(client)
                assert head.startswith(b"http/1.1 200")
                assert b"connection: close" not in head
                assert counts[0] == 0
            finally:
                client.close()
        finally:
            for conn in held:
                conn.close()
        assert _until(lambda: counts[0] == 0)


@PROTOCOLS
def test_pipelined_requests_are_all_answered_before_the_close(
    vault_server: VaultServer, http: str
) -> None:
    """Requests the client already sent behind the one answered with ``Connection:
    close`` would be dropped unanswered: it is the last one that closes."""
    with _busier(vault_server, http) as (port, counts):
        conn = _connect(vault_server, port)
        try:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n" * 2)
            reader = _Reader(conn)
            first, _ = reader.answer()
            second, body = reader.answer()
            assert first.startswith(b"http/1.1 200")
            assert b"connection: close" not in first
            assert second.startswith(b"http/1.1 200")
            assert b'"status"' in body
            assert second.count(b"connection: close") == 1
            assert _closed(conn)
        finally:
            conn.close()
        assert _until(lambda: counts[0] == 1)


@PROTOCOLS
def test_an_answer_given_before_the_body_is_in_keeps_its_connection(
    vault_server: VaultServer, http: str
) -> None:
    """A refusal answered from the head (here 415) while the body is still coming: closing
    with unread bytes makes the kernel reset the connection, which can destroy the
    answer before the client reads it (and a client still sending sees a write error,
    not the refusal)."""
    counts = _array(NOT_LISTENING, 0)
    loads = WorkerLoads(counts, 0, tau=1e-6)  # averages follow at once
    with _server(vault_server, loads, http) as port:
        assert _until(lambda: counts[0] == 0)
        loads.started()
        conn = _connect(vault_server, port)
        try:
            conn.sendall(
                b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\ncontent-type: text/plain\r\n"
                b"content-length: 10\r\n\r\n"
            )
            reader = _Reader(conn)
            head, _ = reader.answer()
            assert head.startswith(b"http/1.1 415")
            assert b"connection: close" not in head
            conn.sendall(b"0123456789")
            head, _ = _exchange(conn)  # the connection serves on
            assert head.startswith(b"http/1.1 200")
        finally:
            conn.close()
        assert _until(lambda: counts[0] == 1)


@PROTOCOLS
def test_a_request_cut_off_by_its_client_is_no_longer_counted(
    vault_server: VaultServer, http: str
) -> None:
    counts = _array(NOT_LISTENING, 0)
    loads = WorkerLoads(counts, 0, tau=1e-6)  # averages follow at once
    release = threading.Event()
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.to_thread(release.wait, WAIT)
        return {"status": "ok"}

    with _server(vault_server, loads, http, app) as port:
        assert _until(lambda: counts[0] == 0)
        conn = _connect(vault_server, port)
        try:
            conn.sendall(b"GET /slow HTTP/1.1\r\nHost: vault\r\n\r\n")
            assert _until(lambda: counts[0] == 1)  # the whole request is in: in flight
        finally:
            conn.close()
        assert _until(lambda: counts[0] == 0)
        release.set()


# A head whose body is never finished.
_SLOW_HEAD = (
    b"POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\ncontent-type: application/json\r\n"
    b'content-length: 100\r\n\r\n{"pan":'
)


class _Reader:
    """Answers read one after the other from a connection (pipelined answers may share
    a read); a connection closed before an answer is whole fails the test."""

    def __init__(self, conn: ssl.SSLSocket) -> None:
        self.conn = conn
        self.data = b""

    def _more(self) -> None:
        chunk = self.conn.recv(4096)
        assert chunk, "the connection was closed before the answer was whole"
        self.data += chunk

    def answer(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            self._more()
            head, _, rest = self.data.partition(b"\r\n\r\n")
        self.data = rest[length:]
        return head.lower(), rest[:length]
