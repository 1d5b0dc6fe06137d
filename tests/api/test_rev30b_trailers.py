"""Review 30b: a chunked request's trailer section and chunk framing were bounded by
nothing but the body deadline on the llhttp listeners (the mTLS API by default, and the
plain-HTTP health listener).

uvicorn's httptools protocol appends every trailer field llhttp reports to the
request's header list, and httptools joins a field's value across reads by copying it
(`bytes +=`); neither the 16 KiB head bound (counted while the head is open) nor the
body limit (the ASGI body the app reads) saw those bytes. So one connection of a
stolen certificate could send, within the 30 s body deadline, a small JSON chunk and
then megabytes of trailer fields: each 5-byte field (``a:b``) a tuple of two bytes
objects, about 26 times its size in the worker's memory, up to 2,000 connections per
identity per worker; or one trailer value megabytes long, copied whole at every read
on the worker's event loop (quadratic). The request was then answered ``200``.

Now a request's framing beyond its body (chunk-size lines, chunk extensions, the
trailer section) counts against the head bound plus a sixteenth of the body the app
may still read: past it the request is refused ``400 request_head_too_large`` and the
connection closed, as h11 (which buffers a trailer section at most 16 KiB) already did.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from api.health import build_health_server
from api.lifecycle import Readiness
from api.server import BackgroundServer
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.audit_trail import new_request_id, request_entries
from tests.support.postgres import free_port

BODY = b'{"pan": "4111111111111111", "format": "uuid"}'
# What an attacker sends after the last chunk: well past every bound the vault sets.
ATTACK_BYTES = 1024 * 1024


@pytest.fixture(scope="module", params=["httptools", "h11"])
def vault(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    hsm_provider: HSMProvider,
) -> Iterator[tuple[VaultServer, str]]:
    """A vault on each HTTP parser, and the parser's name."""
    with running_vault(
        tmp_path_factory.mktemp("trailers"), hsm_provider, http_protocol=request.param
    ) as vault:
        yield vault, request.param


def _connect(vault: VaultServer, name: str = "payments") -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(vault.pki.ca))
    context.load_cert_chain(str(vault.pki.client_cert(name)), str(vault.pki.client_key(name)))
    host, port = vault.url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")


def _chunked_head(path: str = "/v1/tokenize", method: str = "POST", rid: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
        + (f"x-request-id: {rid}\r\n".encode() if rid else b"")
        + b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}".encode() + b"\r\n" + data + b"\r\n"


def _send_flood(sock: socket.socket, start: bytes, piece: bytes, end: bytes) -> None:
    """Send `start`, then `piece` until ATTACK_BYTES went or the vault closed, then
    `end` (if it still reads)."""
    try:
        sock.sendall(start)
        for _ in range(ATTACK_BYTES // len(piece)):
            sock.sendall(piece)
        sock.sendall(end)
    except OSError:
        pass  # closed by the vault: what the fix does


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """The status and JSON body of the first answer read (a bounded wait: a hang fails)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _length(data):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    except OSError:
        pass
    assert data, "no answer"
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[: _length(data) - len(head) - 4] or b"{}")


def _length(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return 1 << 30
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


SHAPES = {
    # Many small trailer fields: each a tuple of two bytes objects in the header list.
    "many trailer fields": (b"0\r\n", b"a:b\r\n" * 64, b"\r\n"),
    # One trailer value megabytes long: httptools copies it whole at every read.
    "one long trailer value": (b"0\r\nx-long: ", b"v" * 4096, b"\r\n\r\n"),
    # A chunk extension megabytes long, then the last chunk.
    "one long chunk extension": (b"1;ext=", b"e" * 4096, b"\r\n \r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_flood_after_the_body_is_refused_as_a_head_too_large(
    vault: tuple[VaultServer, str], shape: str
) -> None:
    server, protocol = vault
    start, piece, end = SHAPES[shape]
    rid = new_request_id()
    with _connect(server) as sock:
        _send_flood(sock, _chunked_head(rid=rid) + _chunk(BODY) + start, piece, end)
        status, problem = _answer(sock)
    # The app had the request (its head was whole): it leaves its entry, a refusal.
    # (It saw the body end early, so the entry says malformed_json: a bound.)
    for _ in range(200):  # a bounded wait: only a hang fails
        if entries := request_entries(server.runtime.engine, rid):
            break
        time.sleep(0.05)
    assert [(e["action"], e["outcome"], e["details"]["status"]) for e in entries] == [
        ("api.request", "failed", 400)
    ]
    # h11 refuses a trailer section past its 16 KiB buffer as a parser error.
    assert status == 400, problem
    assert problem.get("code") in {"request_head_too_large", "malformed_http_request"}, problem
    if protocol == "httptools":
        assert problem.get("code") == "request_head_too_large", problem


def test_a_chunked_body_in_small_chunks_with_a_few_trailers_is_still_answered(
    vault: tuple[VaultServer, str],
) -> None:
    """What a real client may send: the body in 64-byte chunks, two trailer fields."""
    body = b'{"pan": "4111111111111111", "format": "uuid", "metadata": {"order": "%s"}}' % (
        b"o" * 200
    )
    chunks = b"".join(_chunk(body[i : i + 64]) for i in range(0, len(body), 64))
    with _connect(vault[0]) as sock:
        sock.sendall(_chunked_head() + chunks + b"0\r\nx-checksum: abc\r\nx-other: d\r\n\r\n")
        status, answer = _answer(sock)
    assert status == 200, answer


def test_trailers_in_the_read_that_ends_the_request_are_measured_too(
    vault: tuple[VaultServer, str],
) -> None:
    """A request sent whole in one write, 40 KiB of trailer fields at its end: the read
    that ends it is measured by its trailer fields (before, only reads within the body
    were, so one read's worth of fields, up to 256 KiB, passed each request)."""
    server, protocol = vault
    trailers = b"0\r\n" + b"a:b\r\n" * (40 * 1024 // 5) + b"\r\n"
    again = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with _connect(server) as sock:
        with contextlib.suppress(OSError):  # closed by the vault
            sock.sendall(_chunked_head() + _chunk(BODY) + trailers + again)
        status, problem = _answer(sock)
    if protocol == "httptools":
        assert (status, problem.get("code")) == (400, "request_head_too_large"), problem
    else:  # h11 takes a trailer section that arrives whole in one read (then drops it)
        assert status in {200, 400}, problem


def test_a_large_body_in_128_byte_chunks_is_read_whole(vault: tuple[VaultServer, str]) -> None:
    """The bound grows with the body: a batch-sized body sent in small chunks is read
    whole and answered for what it is (here an empty batch, 422), not cut as a head."""
    body = b'{"items": [], "pad": "' + b"p" * (1024 * 1024) + b'"}'
    chunks = b"".join(_chunk(body[i : i + 128]) for i in range(0, len(body), 128))
    with _connect(vault[0]) as sock:
        sock.sendall(_chunked_head("/v1/tokenize/batch") + chunks + b"0\r\n\r\n")
        status, answer = _answer(sock)
    assert status == 422, answer


def test_body_sent_after_the_answer_buys_no_trailer_allowance(
    vault: tuple[VaultServer, str],
) -> None:
    """A caller answered before its body is read (the policy does not know `stranger`)
    whose body goes on: uvicorn drops it, so it buys no trailer room, and 40 KiB of
    trailers after a megabyte of it close the connection; a request pipelined behind
    them is never answered. (With dropped body counted, it bought 64 KiB of room.)"""
    server, protocol = vault
    body = _chunk(b" " * 4096) * 256
    trailers = b"0\r\n" + b"a:b\r\n" * (40 * 1024 // 5) + b"\r\n"
    again = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    received = b""
    with _connect(server, "stranger") as sock:
        with contextlib.suppress(OSError):  # closed by the vault
            sock.sendall(_chunked_head() + body + trailers + again)
        try:
            # Until the vault closes, or a second answer came.
            while received.count(b"HTTP/1.1 ") < 2 and (more := sock.recv(65536)):
                received += more
        except OSError:
            pass
    # h11 takes a trailer section that arrives whole in one read (then drops it), but
    # since session 35 an answer to a chunked request ends its connection on both
    # parsers (`api.guard._closing`): the request behind is never answered either way.
    assert received.count(b"HTTP/1.1 ") == 1, (protocol, received)


@pytest.fixture(scope="module")
def health_url() -> Iterator[tuple[str, int]]:
    port = free_port()
    server = BackgroundServer(build_health_server(dict, Readiness(), "127.0.0.1", port))
    server.start()
    try:
        yield "127.0.0.1", port
    finally:
        server.stop()


def test_the_health_listener_bounds_trailers_too(health_url: tuple[str, int]) -> None:
    """The plain-HTTP health port (no certificate, no identity) runs llhttp as well. Its
    app answers before reading a body, so the flood cannot change that answer: the
    connection is closed instead, and a request pipelined behind the flood is never
    answered (before, the flood was read whole and the next request answered too)."""
    start, piece, end = SHAPES["many trailer fields"]
    again = b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(health_url, timeout=30) as sock:
        _send_flood(sock, _chunked_head("/livez", "GET") + _chunk(b"x") + start, piece, end + again)
        received = b""
        try:
            # Until the listener closes, or a second answer came.
            while received.count(b"HTTP/1.1 ") < 2 and (more := sock.recv(65536)):
                received += more
        except OSError:
            pass
    assert received.count(b"HTTP/1.1 ") == 1, received


def test_a_full_batch_streamed_in_a_json_encoders_fragments_is_answered(
    vault: tuple[VaultServer, str],
) -> None:
    """Review 30c: a client that streams its body as its JSON encoder yields it (requests
    or httpx given `json.JSONEncoder().iterencode(...)`: one chunk per fragment, mostly
    1 to 20 bytes) sends more chunk-size lines than body for a 1,000-item batch (about
    51 KB of them for 47 KB of body); the bound, a sixteenth of the body past the head
    bound, refused it as a head too large. A chunk's own size line is not what the bound
    is for (llhttp keeps nothing of it): only the framing beyond it, and trailers."""
    items = [{"pan": "4111111111111111", "format": "uuid"}] * 1000
    fragments = json.JSONEncoder().iterencode({"items": items})
    chunks = b"".join(_chunk(fragment.encode()) for fragment in fragments)
    with _connect(vault[0]) as sock:
        sock.sendall(_chunked_head("/v1/tokenize/batch"))
        for start in range(0, len(chunks), 4096):  # as it streams: reads within the body
            sock.sendall(chunks[start : start + 4096])
        sock.sendall(b"0\r\n\r\n")
        status, answer = _answer(sock)
    assert status == 200, answer


def test_trailers_in_the_read_that_begins_the_request_are_measured_too(
    vault: tuple[VaultServer, str],
) -> None:
    """Review 30c: a read that begins a request was measured only for its head. Its
    head, a chunk, then up to a read's worth (256 KiB) of trailer fields, and no end:
    uvicorn held every field (about 26 times its size) until the body deadline closed
    the connection, unanswered; per connection of the identity's 2,000. Now those
    fields count in the read that brought them: refused at once."""
    server, protocol = vault
    trailers = b"0\r\n" + b"a:b\r\n" * (28 * 1024 // 5)  # one read, past the 16 KiB
    with _connect(server) as sock:
        with contextlib.suppress(OSError):  # closed by the vault
            sock.sendall(_chunked_head() + _chunk(BODY) + trailers)
        if protocol == "h11":  # parses (and drops) a trailer section that came whole
            with contextlib.suppress(OSError):
                sock.sendall(b"\r\n")
        status, problem = _answer(sock)
    if protocol == "httptools":
        assert (status, problem.get("code")) == (400, "request_head_too_large"), problem
    else:
        assert status in {200, 400}, problem
