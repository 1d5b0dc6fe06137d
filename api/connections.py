"""Connection limits: a deadline for a request's headers and one for its body, and a cap
on concurrent connections per client identity.

IN PCI SCOPE. An outside review held a half-sent request open and the vault waited
forever: each such connection holds a socket and a TLS session, and enough of them starve
everyone. uvicorn 0.54 has a keep-alive timeout between requests but no deadline while a
request is being read, so `GuardedHttpToolsProtocol` (and its h11 twin
`GuardedH11Protocol`, both built by `guarded_protocol`) add them:
the headers must be complete within `header_timeout` seconds of the connection opening or
of the first byte after an answer (blank lines included), and the body within
`body_timeout` seconds of the headers.
On expiry the connection is closed (nothing reached the app, so nothing is undone) and
a warning names the peer and the phase. The per-identity cap refuses (closes) a new
connection beyond `max_connections_per_identity`; its default is far above what a busy
client's connection pool holds (hundreds of keep-alive connections are normal). A
certificate that passes TLS but names no identity is capped per certificate.

A worker of several (`cofre serve`) also counts its requests in flight for the node and
answers one with ``Connection: close`` when it is busier than another worker
(`api.balance`): the kernel's hash of a handful of connections can leave a worker idle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import h11
import structlog

from api._connection_limits import ConnectionLimits
from api.balance import WorkerLoads
from api.problems import PROBLEM_JSON, PROBLEMS, TYPE_BASE
from api.tls import TLSIdentityH11Protocol, TLSIdentityHttpToolsProtocol

_log = structlog.get_logger("cofre.api.connections")
# What uvicorn's h11 allows for a request head (``h11_max_incomplete_event_size``).
MAX_HEADER_BYTES = 16 * 1024
# Where h11 finds a head's end (its ``blank_line_regex``).
_HEAD_END = re.compile(rb"\n\r?\n")
# uvicorn answers what its parser refuses with a text/plain 400 of its own; these
# answers are RFC 9457 problems with a stable code like every other refusal.
MALFORMED: Final = "malformed_http_request"
HEAD_TOO_LARGE: Final = "request_head_too_large"
# A chunked request's framing and trailers may take the head bound, plus one byte for
# every 16 of body (review 30b), beyond each chunk's own size line (review 30c).
_FRAMING_PER_BODY: Final = 16
# A head's bytes beyond its target and fields: the space after the method,
# " HTTP/1.1\r\n", and the blank line that ends it.
_REQUEST_LINE_REST: Final = 14


def _problem_400(code: str) -> bytes:
    """A whole ``400`` answer with the problem+json body of `code`, closing the
    connection (the parser cannot tell where the next request would start)."""
    status, title = PROBLEMS[code]
    body = json.dumps(
        {"type": TYPE_BASE + code, "title": title, "status": status, "code": code},
        sort_keys=True,
    ).encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: " + PROBLEM_JSON.encode()
        + b"\r\ncache-control: no-store\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n" + body
    )  # fmt: skip


class _HeadTooLarge(Exception):
    """Stops llhttp inside a callback (a signal that never leaves this module: httptools
    wraps it in the parser error that uvicorn answers)."""


class _Requests:
    """A connection's requests in flight, counted in its worker's `WorkerLoads` (the
    protocol's class attribute ``loads``; None for a node of one process): each from
    when it is in whole (head and body: work the worker now has) until its answer is sent
    or the connection is lost. A request still being sent is not counted: one
    certificate could otherwise hold hundreds of them, at no cost until the body
    deadline, to make a worker look busy and close other clients' connections.
    `pending` tells whether the connection holds another request behind the one being
    answered (pipelined)."""

    def __init__(self, loads: WorkerLoads | None, pending: Callable[[], bool]) -> None:
        self.loads = loads
        self.pending = pending
        self.counted: list[Any] = []

    def began(self, cycle: Any) -> None:
        """A request's cycle was created: its answer may close the connection."""
        if self.loads is not None:
            _close_when_busier(cycle, self)

    def read(self, cycle: Any) -> None:
        """`cycle`'s request is in whole: count it (once; not when already answered)."""
        loads = self.loads
        if loads is None or cycle is None or cycle.response_complete or cycle in self.counted:
            return
        self.counted.append(cycle)
        loads.started()

    def answered(self) -> None:
        """An answer was sent: uncount its request."""
        loads = self.loads
        if loads is None:
            return
        for cycle in [cycle for cycle in self.counted if cycle.response_complete]:
            self.counted.remove(cycle)
            loads.finished()

    def lost(self) -> None:
        loads = self.loads
        if loads is None:
            return
        for _ in self.counted:
            loads.finished()
        self.counted.clear()

    def may_close(self, cycle: Any) -> bool:
        """Whether `cycle`'s answer, starting, should close the connection: its request
        is in whole (closing with a body unread makes the kernel reset the connection,
        which can destroy the answer), nothing was received behind it (it would be
        dropped unanswered), and this worker should shed a connection now."""
        assert self.loads is not None  # noqa: S101 - only wrapped with loads
        return cycle in self.counted and not self.pending() and self.loads.should_close()


def _close_when_busier(cycle: Any, requests: _Requests) -> None:
    """Have the answer of `cycle` (uvicorn's request-response cycle of either protocol)
    carry ``connection: close`` when `requests` says so as it starts: both protocols
    then close the connection once the answer is sent, and the client knows not to send
    another request on it. The cycle's task is created but has not run yet, so the app
    is handed this `send`."""
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]] = cycle.send

    async def send_or_close(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"connection" for name, _ in headers) and (
                requests.may_close(cycle)
            ):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    cycle.send = send_or_close


class GuardedH11Protocol(TLSIdentityH11Protocol):
    """`TLSIdentityH11Protocol` with read deadlines and the per-identity cap (the class
    attributes are set by `guarded_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_identity: int = 2000
    max_connections: int | None = None
    by_address: bool = False
    max_header_bytes: int = MAX_HEADER_BYTES
    loads: WorkerLoads | None = None

    _guard: ConnectionLimits
    _requests: _Requests

    @property
    def cofre_identity(self) -> str | None:
        return self._guard.identity

    @property
    def cofre_connection_key(self) -> str | None:
        return self._guard.key

    def connection_made(self, transport: Any) -> None:
        self._guard = ConnectionLimits(self, type(self))
        self._requests = _Requests(self.loads, lambda: bool(self.conn.trailing_data[0]))
        super().connection_made(transport)
        if self._guard.admit(transport):
            # A connection that sends nothing is held to the header deadline too.
            self._guard.arm("headers")

    def handle_events(self) -> None:
        # h11 refuses a head still incomplete past 16 KiB, but parses one that arrived
        # whole in a read at any size: before it parses the next head, refuse one whose
        # end is not within the bound. (The buffer's length is read without a copy;
        # only a buffer past the bound, a large body or head, is searched.)
        conn = self.conn
        if (
            conn.their_state is h11.IDLE
            and len(conn._receive_buffer) > self.max_header_bytes
            and not _HEAD_END.search(conn.trailing_data[0], 0, self.max_header_bytes)
        ):
            _log.warning("request refused: head too large", limit=self.max_header_bytes)
            self._guard.disarm()
            self.send_400_response("Request head too large.")
            return
        before = self.cycle
        super().handle_events()
        cycle: Any = self.cycle  # None before the first request
        if cycle is not before and cycle is not None:
            self._requests.began(cycle)
        if cycle is not None and not cycle.more_body:
            self._requests.read(cycle)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own writer sends text/plain; the message is uvicorn's (or ours above).
        self._guard.disarm()
        self.transport.write(_problem_400(HEAD_TOO_LARGE if "too large" in msg else MALFORMED))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        self._requests.answered()  # first: uvicorn may begin the next request in it
        super().on_response_complete()
        # Between requests uvicorn's keep-alive timeout applies; the next request's first
        # byte arms the header deadline again.
        self._guard.disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.disarm()
        self._requests.lost()
        super().connection_lost(exc)

    def _follow_state(self) -> None:
        state = self.conn.their_state
        phase = self._guard.phase
        if state is h11.IDLE:
            if self.conn.trailing_data[0] and phase != "headers":
                self._guard.arm("headers")
        elif state is h11.SEND_BODY:
            if phase != "body":
                self._guard.arm("body")
        else:
            self._guard.disarm()


class GuardedHttpToolsProtocol(TLSIdentityHttpToolsProtocol):
    """`TLSIdentityHttpToolsProtocol` with the same limits as `GuardedH11Protocol`,
    following llhttp's callbacks instead of h11's states; and, since llhttp sets no
    bound on a request's head (h11 does: uvicorn's 16 KiB), one of `max_header_bytes`."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_identity: int = 2000
    max_connections: int | None = None
    by_address: bool = False
    max_header_bytes: int = MAX_HEADER_BYTES
    loads: WorkerLoads | None = None

    _guard: ConnectionLimits
    _requests: _Requests
    _head_bytes: int = 0
    _in_head: bool = False
    _reading: bool = False
    # Per read: its size, and whether a request began / ended in it.
    _read_size: int = 0
    _began: bool = False
    _completed: bool = False
    # The request's body bytes, and the bytes of its body phase that were not body
    # (chunk-size lines, chunk extensions, the trailer section): review 30b.
    _body_bytes: int = 0
    _body_in_read: int = 0
    _framing: int = 0
    _head_fields: int = 0  # the request's header fields before its trailers
    # Each chunk's own size line, credited to the framing room (review 30c).
    _chunk_body: int = 0
    _chunk_credit: int = 0

    @property
    def cofre_identity(self) -> str | None:
        return self._guard.identity

    @property
    def cofre_connection_key(self) -> str | None:
        return self._guard.key

    def connection_made(self, transport: Any) -> None:
        self._guard = ConnectionLimits(self, type(self))
        self._requests = _Requests(self.loads, lambda: bool(self.pipeline))
        super().connection_made(transport)
        if self._guard.admit(transport):
            self._guard.arm("headers")

    def data_received(self, data: bytes) -> None:
        self._read_size = len(data)
        self._began = self._completed = False
        in_body = self._reading and not self._in_head
        self._body_in_read = 0
        super().data_received(data)
        if self.transport.is_closing():
            self._guard.disarm()
            return
        if self._reading and not self._in_head and self._framing_exceeded(data, in_body):
            self._refuse_mid_body()
            return
        if self._in_head:
            # A head still open after this read: all of the read is head (or CR/LF
            # before it) unless a request ended in it first; then only what the parser
            # has handed over of the new head (its end is measured exactly).
            self._head_bytes += self._head_size() if self._completed else len(data)
            if self._head_bytes > self.max_header_bytes:
                _log.warning("request refused: head too large", limit=self.max_header_bytes)
                self._guard.disarm()
                self.send_400_response("Request head too large.")
                return
        # The deadline follows where the parser stands once this read is consumed, as
        # `GuardedH11Protocol` does: a request that arrived whole in one read (nearly
        # all of them) never arms a timer.
        phase = self._guard.phase
        if self._in_head:
            if phase != "headers":
                self._guard.arm("headers")
        elif self._reading:
            if phase != "body":
                self._guard.arm("body")
        elif self._completed:
            # A whole request is in: the app answers it, then uvicorn's keep-alive
            # timeout applies until the next request.
            if phase:
                self._guard.disarm()
        elif phase != "headers" and _answered(self.cycle):
            # Bytes that began no request: llhttp skips CR/LF before a request without
            # a callback, and uvicorn cancelled its keep-alive timer on them. Without
            # this a client sending "\r\n" would hold the connection with no timer at
            # all. (Kept, not re-armed, when already running: trickling CR/LF does not
            # extend it. While an answer is pending, its keep-alive timer follows.)
            self._guard.arm("headers")

    def _framing_exceeded(self, data: bytes, in_body: bool) -> bool:
        """Count the framing in `data`, a read that left a request in its body (which
        `in_body` it was in before); whether the request's framing is past its room."""
        if in_body and not self._began and not self._completed:
            # A read wholly within one request's body: what llhttp did not hand over as
            # body is framing. uvicorn appends every trailer field to the request's
            # headers and httptools joins a field's value across reads by copying it,
            # so without this bound a chunked request's trailers grew the worker's
            # memory (and its copying) until the body deadline (review 30b).
            # (A read that ends the request is measured by its trailer fields instead,
            # in `on_message_complete`.)
            self._framing += len(data) - self._body_in_read
        elif self._began and self._reading and not self._in_head:
            # A read that began a request and left it in its body: what followed its
            # head. Measured by nothing before review 30c: a read's worth of trailer
            # fields (up to 256 KiB) was held until the body deadline. (A request that
            # began behind one this read ended is measured by its stored fields only.)
            after = self._trailer_size()
            if not self._completed:
                head = self._head_size(self._head_fields) + len(self.parser.get_method())
                after = len(data) - head - _REQUEST_LINE_REST - self._body_in_read
            self._framing += max(0, after)
        return self._framing > self._framing_room()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = self._in_head = self._began = True
        self._head_bytes = self._body_bytes = self._framing = 0
        self._chunk_body = self._chunk_credit = 0

    def on_body(self, body: bytes) -> None:
        # Body is never framing; but only body the app may still read buys framing
        # room: once its answer is complete uvicorn drops the rest (read on, as before,
        # until the message ends or the body deadline: closing with it unsent could
        # reset the connection before the client reads its answer).
        self._body_in_read += len(body)
        self._chunk_body += len(body)
        if self._app_reads():
            self._body_bytes += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_body = 0

    def on_chunk_complete(self) -> None:
        # A chunk's size line is the framing every chunked client sends: credited, so
        # that a body streamed in small chunks (a JSON encoder's fragments, a few bytes
        # each) is not refused as a head too large (review 30c). llhttp keeps nothing
        # of it; only what goes beyond it (extensions, leading zeros, trailers) takes
        # the room. Not once the answer is complete: that body is dropped.
        if self._chunk_body and self._app_reads():
            self._chunk_credit += len(f"{self._chunk_body:x}") + 4
        self._chunk_body = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The head's exact size only when it may exceed the bound: it began and ended
        # in this read and the read is within the bound (the usual case), it cannot.
        bounded = self._began and self._read_size <= self.max_header_bytes
        if not bounded and self._head_size() > self.max_header_bytes:
            _log.warning("request refused: head too large", limit=self.max_header_bytes)
            self._guard.disarm()
            self.send_400_response("Request head too large.")
            # Stops the parser before the app sees the request (uvicorn answers the
            # parser error with a 400 of its own, dropped by `send_400_response`).
            raise _HeadTooLarge
        self._head_fields = len(self.headers)
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:
            self._requests.began(self.cycle)

    def on_message_complete(self) -> None:
        # Trailer fields that came in the read ending the request (`data_received`
        # measures the reads before it): uvicorn appended them to the headers.
        if self._trailer_size() > self._framing_room() - self._chunk_credit:
            self._refuse_mid_body()
            raise _HeadTooLarge  # stops the parser: a request behind it is not read
        super().on_message_complete()
        self._reading = False
        self._completed = True
        self._requests.read(self.cycle)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own writer sends text/plain: a parser error (Content-Length with
        # Transfer-Encoding, a duplicate Content-Length, an invalid method) or our head
        # bound is answered as a problem instead. Once closing, the answer was sent.
        if not self.transport.is_closing():
            self._guard.disarm()
            code = HEAD_TOO_LARGE if "too large" in msg else MALFORMED
            self.transport.write(_problem_400(code))
            self.transport.close()

    def _framing_room(self) -> int:
        """How many bytes of framing and trailers the request being read may send."""
        return self.max_header_bytes + self._body_bytes // _FRAMING_PER_BODY + self._chunk_credit

    def _app_reads(self) -> bool:
        """Whether the app may still read the request's body (its answer incomplete)."""
        cycle: Any = self.cycle  # None before the first request
        return cycle is not None and not cycle.response_complete

    def _trailer_size(self) -> int:
        """The trailer fields uvicorn appended to the request's headers, as sent."""
        return sum(len(name) + len(value) + 4 for name, value in self.headers[self._head_fields :])

    def _refuse_mid_body(self) -> None:
        """Refuse the request being read: its 400 unless its answer has begun (the app
        may answer before reading the body: then only the connection is closed), and
        the connection closed, as the body deadline closes it (the app sees a
        disconnect)."""
        _log.warning("request refused: chunk framing or trailers too large")
        self._guard.disarm()
        cycle: Any = self.cycle
        if cycle is not None and not cycle.response_started:
            # As uvicorn marks a lost connection: the app's sends are dropped and its
            # next read of the body is a disconnect; this answer is the only one.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_problem_400(HEAD_TOO_LARGE))
        self.transport.close()

    def _head_size(self, fields: int | None = None) -> int:
        """The head parsed so far as sent: the target, and each header (the first
        `fields`, or all) with its ": " and CR/LF (the request line's method and version
        aside)."""
        headers = self.headers[:fields]
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in headers)

    def on_response_complete(self) -> None:
        self._requests.answered()  # first: uvicorn may begin a pipelined request in it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.disarm()
        self._requests.lost()
        super().connection_lost(exc)


def _answered(cycle: Any) -> bool:
    """No request, or its answer sent (uvicorn's ``cycle`` is None before the first)."""
    return cycle is None or bool(cycle.response_complete)


def guarded_protocol(
    *,
    header_timeout: float,
    body_timeout: float,
    max_connections_per_identity: int,
    http: str = "httptools",
    loads: WorkerLoads | None = None,
    by_address: bool = False,
    max_connections: int | None = None,
) -> type[GuardedHttpToolsProtocol | GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http=`` setting, with these limits: `http` is
    ``httptools`` (llhttp, the default) or ``h11`` (pure Python, slower); `loads` is a
    worker's slot in its node's requests in flight (`api.balance`), None alone;
    `by_address` caps a connection without a certificate per client address, and
    `max_connections` the listener's connections in all (None: no such cap)."""
    base: type[GuardedHttpToolsProtocol | GuardedH11Protocol] = (
        GuardedH11Protocol if http == "h11" else GuardedHttpToolsProtocol
    )
    return type(
        f"Cofre{base.__name__.removeprefix('Guarded')}",
        (base,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections_per_identity": max_connections_per_identity,
            "by_address": by_address,
            "max_connections": max_connections,
            "loads": loads,
        },
    )
