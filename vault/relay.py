"""The outbound relay (what VGS calls an outbound proxy): an adapter sends a body with
tokens in marked places; the vault puts the PANs there, calls the acquirer over TLS, and
hands back the acquirer's answer with any PAN in it tokenized or masked.

IN PCI SCOPE, holds card data. The body with PANs exists only in this process's memory
between detokenizing and sending. Upstreams are fixed per route in the policy (the
caller names a route, never a URL); TLS is verified against the route's CA bundle or the
system's. Retries happen only for routes declared idempotent.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

import httpcore
import httpx

from cofre.redaction import mask_pan_values
from policies.models import RelayRoute
from vault.errors import RelayBodyInvalid, UpstreamBusy, UpstreamTimeout, UpstreamUnavailable

# How deep a relay body or an upstream's answer may nest. Acquirers' bodies are a few
# levels deep; Python's recursion (a copy, the masking) gives out near 700 (review 26).
MAX_DEPTH: Final = 64
# What stands where the vault withheld a card detail it sent from the answer.
WITHHELD_DETAIL: Final = "[withheld]"
# The most of an upstream's answer the vault reads (decoded). Acquirers answer a few KB.
MAX_ANSWER_BYTES: Final = 1 << 20


@dataclass(frozen=True)
class RelayResult:
    status: int
    body: Any


def _steps(pointer: str) -> list[str]:
    # RFC 6901: "~1" is "/", "~0" is "~".
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


def _parent(document: Any, pointer: str) -> tuple[Any, str | int]:
    steps = _steps(pointer)
    node = document
    for step in steps[:-1]:
        node = _child(node, step, pointer)
    last: str | int = steps[-1]
    if isinstance(node, list):
        if not str(last).isdigit() or int(last) >= len(node):
            raise RelayBodyInvalid(f"the body has nothing at {pointer}")
        last = int(last)
    elif not isinstance(node, dict) or last not in node:
        raise RelayBodyInvalid(f"the body has nothing at {pointer}")
    return node, last


def _child(node: Any, step: str, pointer: str) -> Any:
    if isinstance(node, dict) and step in node:
        return node[step]
    if isinstance(node, list) and step.isdigit() and int(step) < len(node):
        return node[int(step)]
    raise RelayBodyInvalid(f"the body has nothing at {pointer}")


def get_pointer(document: Any, pointer: str) -> Any:
    parent, key = _parent(document, pointer)
    return parent[key]


def set_pointer(document: Any, pointer: str, value: Any) -> None:
    parent, key = _parent(document, pointer)
    parent[key] = value


def drop_pointer(document: Any, pointer: str) -> None:
    """Remove the member `pointer` names from `document` if it is there."""
    try:
        parent, key = _parent(document, pointer)
    except RelayBodyInvalid:
        return
    if isinstance(parent, dict):
        del parent[key]


def add_pointer(document: Any, pointer: str, value: Any) -> None:
    """Add `value` as the member `pointer` names, in an object the body already has.

    Raises `RelayBodyInvalid` when the parent object is missing, or when the member is
    already there: only the vault puts card details in, so a caller that sends one
    (a code, an expiry) is refused rather than overwritten or forwarded."""
    steps = _steps(pointer)
    node = document
    for step in steps[:-1]:
        node = _child(node, step, pointer)
    if not isinstance(node, dict):
        raise RelayBodyInvalid(f"the body has no object to hold {pointer}")
    if steps[-1] in node:
        raise RelayBodyInvalid(
            f"the body already has a value at {pointer}, where the vault puts the card's "
            "details: send only the card token"
        )
    node[steps[-1]] = value


def nested_deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` (parsed JSON) has objects or arrays more than `limit` deep;
    without recursion, so any depth is answered."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def withhold_sent(value: Any, sent: Sequence[str]) -> Any:
    """`value` (an upstream's answer) with every occurrence of the card details the
    vault sent (`sent`: the security code, the cardholder's name, the expiry) replaced
    by `WITHHELD_DETAIL`, wherever the upstream echoed them: a value, a key, inside a
    message. A digit string is matched as a whole run of digits (a code's leading zeros
    optional, as a number drops them), a name as whole words in any case (any
    whitespace between them, or SURNAME/GIVEN as a magnetic stripe has it); a number
    whose digits hold one becomes the string. A string that holds one only once
    percent-decoded or with other scripts' digits read as ASCII (fullwidth,
    Arabic-Indic) is withheld whole. The answer goes to callers outside PCI scope, and
    acquirers echo requests in their errors. Run it on the masked answer: withholding
    part of a spaced PAN first would leave the rest for the PAN detector to miss."""
    patterns = [_pattern(text) for text in sent if text]
    if not patterns:
        return value

    def text(item: str) -> str:
        for pattern in patterns:
            item = pattern.sub(WITHHELD_DETAIL, item)
        if item.isascii() and "%" not in item and "+" not in item:
            return item
        for other in (unquote_plus(item), _ascii_digits(item)):
            if any(pattern.search(other) for pattern in patterns):
                return WITHHELD_DETAIL
        return item

    def walk(node: Any) -> Any:
        # Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH.
        if isinstance(node, str):
            return text(node)
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                key = text(str(k))
                while key in out:  # two members withheld to one name: keep both
                    key += "'"
                out[key] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, int | float) and not isinstance(node, bool):
            shown = text(str(node))
            if shown != str(node):
                return shown
        return node

    return walk(value)


# What may be a piece of a card number among an object's values: up to this many
# digits (a card has 13-19), spaces and hyphens between groups taken out.
_MAX_PIECE_DIGITS: Final = 18
_GROUP_SEPARATORS: Final = re.compile(r"[ -]")


def withhold_split_pans(value: Any, pans: Sequence[str]) -> Any:
    """`value` (an upstream's answer) with a PAN the vault sent withheld where the
    answer splits it over the values of one object (``{"bin": "555555", "rest":
    "5555554444"}``): in each object, the values that are short runs of digits (strings,
    their spaces and hyphens taken out, or numbers) are joined in member order, and
    every one that makes up part of an occurrence of a PAN in `pans` becomes
    `WITHHELD_DETAIL`. `mask_pan_values` joins the items of a list, not the values of
    an object: an object's amount, currency, NSU and authorization code often make 13
    or more digits together, so only the PANs the vault knows it sent are looked for.
    Run it on the masked answer (a whole PAN is masked there already)."""
    wanted = [pan for pan in pans if pan]
    if not wanted:
        return value

    def walk(node: Any) -> Any:
        # Recursion is bounded: `send` refuses an answer deeper than MAX_DEPTH.
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(item) for key, item in node.items()}
        pieces = [(key, digits) for key, item in out.items() if (digits := _piece(item))]
        joined = "".join(digits for _, digits in pieces)
        for key in _covering(pieces, joined, wanted):
            out[key] = WITHHELD_DETAIL
        return out

    return walk(value)


def _piece(value: Any) -> str | None:
    """The ASCII digits of a value that may be a piece of a card number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        text = str(value)
    elif isinstance(value, str) and len(value) <= 2 * _MAX_PIECE_DIGITS:
        text = _ascii_digits(_GROUP_SEPARATORS.sub("", value))
    else:
        return None
    fits = 0 < len(text) <= _MAX_PIECE_DIGITS and text.isascii() and text.isdigit()
    return text if fits else None


def _covering(pieces: list[tuple[Any, str]], joined: str, pans: list[str]) -> set[Any]:
    """The keys of the `pieces` (key, digits; `joined` is their digits in order) that
    make up part of an occurrence of one of `pans` spread over two or more of them."""
    hit: set[Any] = set()
    for pan in pans:
        start = joined.find(pan)
        while start != -1:
            end, offset, covering = start + len(pan), 0, []
            for key, digits in pieces:
                if offset < end and offset + len(digits) > start:
                    covering.append(key)
                offset += len(digits)
            if len(covering) > 1:
                hit.update(covering)
            start = joined.find(pan, start + 1)
    return hit


def _ascii_digits(text: str) -> str:
    # Every Unicode decimal digit (fullwidth, Arabic-Indic, ...) as its ASCII digit.
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)


def _pattern(text: str) -> re.Pattern[str]:
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        digits = rf"0*{re.escape(digits)}" if digits else "0+"
        return re.compile(rf"(?<![0-9]){digits}(?![0-9])")
    words = text.split()
    body = re.escape(text)
    if len(words) > 1:
        # Any whitespace between the words, and the magnetic stripe's SURNAME/GIVEN.
        forward = r"\s+".join(map(re.escape, words))
        track = re.escape(words[-1]) + r"\s*/\s*" + r"\s+".join(map(re.escape, words[:-1]))
        body = f"(?:{forward}|{track})"
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def mask_strings(value: Any) -> Any:
    """`value` (a JSON answer) with every PAN-like value masked, in whatever
    representation (`cofre.redaction.mask_pan_values`)."""
    return mask_pan_values(value)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every step (a read, a write, the TLS handshake) waits at most
    what is left of the relay under way in the calling thread (`_DeadlineBackend`)."""

    def __init__(self, stream: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        cut = self._backend.cut(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, cut), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own network backend, with each step's timeout cut to what is left of
    the relay the calling thread runs (`until`). httpx's timeouts are per step: an
    upstream that trickles its answer a byte at a time, each within the step's limit,
    held a relay thread (and the caller) for as long as it liked (review 37). The name
    lookup is the one step not bounded here (`getaddrinfo` takes no timeout); each
    address it gives is tried within what is left."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Bound this thread's network steps by `deadline` (`time.monotonic`)."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def cut(self, timeout: float | None, late: type[Exception]) -> float:
        """`timeout` cut to what is left before this thread's deadline; raises `late`
        (httpcore's timeout of the step, which httpx maps to its own) once none is."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            if timeout is None:
                raise late("a relay step without a deadline")
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise late("the relay's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # The name's addresses one by one, each within what is left: given the whole
        # step's time once, `socket.create_connection` gave it to every address (a dead
        # AAAA beside the A held the relay twice its timeout; review 40).
        self.cut(timeout, httpcore.ConnectTimeout)
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        failure: Exception = httpcore.ConnectError(f"{host!r} has no address")
        for index, (*_, address) in enumerate(addresses):
            cut = self.cut(timeout, httpcore.ConnectTimeout)
            # Each address but the last gets its share of what is left, never all of
            # it: a first address that never answers (a dead AAAA) took the whole
            # deadline, and the live one after it was never tried (review 42).
            cut /= len(addresses) - index
            try:
                stream = self._backend.connect_tcp(
                    str(address[0]), int(address[1]), cut, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - routes are https URLs
        raise httpcore.ConnectError("a relay goes to an https URL, not a Unix socket")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class RelayClient:
    """HTTP clients per route (kept for connection reuse), the call itself, and each
    route's count of relays in flight (`slot`)."""

    def __init__(self) -> None:
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()
        self._backend = _DeadlineBackend()
        self._in_flight: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, name: str, route: RelayRoute) -> Iterator[None]:
        """Hold one of the route's `max_in_flight` places for a relay, or raise
        `UpstreamBusy` at once when this process has that many relays to the route
        under way. Review 37: every route shared one pool of relay threads, so an
        upstream that answers slowly (or not at all, up to its timeout) took them all,
        and every other route's relays waited behind it; now it takes its own places
        only."""
        with self._lock:
            held = self._in_flight.get(name, 0)
            if held >= route.max_in_flight:
                raise UpstreamBusy(
                    f"route {name!r} has {route.max_in_flight} relays waiting on its "
                    "upstream already",
                    retry_after=1.0,
                )
            self._in_flight[name] = held + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[name] -= 1

    def _client(self, name: str, route: RelayRoute) -> httpx.Client:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                verify: Any = True
                if route.ca_bundle:
                    verify = ssl.create_default_context(cafile=route.ca_bundle)
                client = httpx.Client(
                    verify=verify,
                    timeout=route.timeout_seconds,
                    follow_redirects=False,
                    # Plain bytes: a compressed answer is read whole when decoded.
                    headers={"accept-encoding": "identity"},
                )
                _bound_by(client, self._backend)
                self._clients[name] = client
            return client

    def send(self, name: str, route: RelayRoute, body: Any) -> RelayResult:
        """Send `body` (with PANs) to the route's upstream; return its status and body.

        The whole call, retries and the answer's last byte included, takes at most the
        route's `timeout_seconds`; an answer is read up to `MAX_ANSWER_BYTES`.

        Raises `UpstreamTimeout` or `UpstreamUnavailable` (after the allowed retries).
        """
        client = self._client(name, route)
        attempts = 1 + route.retries
        deadline = time.monotonic() + route.timeout_seconds
        late = UpstreamTimeout(
            f"the upstream of route {name!r} did not answer within {route.timeout_seconds:g}s"
        )
        with self._backend.until(deadline):
            for attempt in range(1, attempts + 1):
                try:
                    with client.stream(route.method, route.upstream, json=body) as response:
                        # A server error's body is never used (retried, or refused by
                        # its status): not read, so it cannot end the relay before its
                        # retry (review 42).
                        failed = response.status_code >= 500
                        content = b"" if failed else _read_answer(name, response)
                except httpx.TimeoutException:
                    if attempt == attempts or time.monotonic() >= deadline:
                        raise late from None
                    continue
                except httpx.HTTPError as exc:
                    if time.monotonic() >= deadline:
                        raise late from None
                    if attempt == attempts:
                        raise UpstreamUnavailable(
                            f"the upstream of route {name!r} is unreachable ({type(exc).__name__})"
                        ) from None
                    continue
                except RuntimeError:
                    # httpx's "client has been closed": the vault closed its clients while
                    # stopping. The card may have gone: raised as the vault's own error, so
                    # the relay's outcome entry is written (review 37: none was).
                    raise UpstreamUnavailable(
                        f"the relay of route {name!r} was cut as the vault stopped: the "
                        "upstream's answer is unknown"
                    ) from None
                if response.status_code >= 500:
                    if attempt < attempts and time.monotonic() < deadline:
                        continue
                    raise UpstreamUnavailable(
                        f"the upstream of route {name!r} answered {response.status_code}"
                    )
                return RelayResult(response.status_code, _answer(name, content))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _bound_by(client: httpx.Client, backend: _DeadlineBackend) -> None:
    """Have every connection pool of `client` (its own, and a proxy's from the
    environment, `HTTPS_PROXY`) open its connections through `backend`. httpx has no
    public way to give a pool a network backend; a version that moved it is refused
    here, before anything is sent, rather than relaying without a deadline."""
    for transport in [client._transport, *client._mounts.values()]:
        if transport is None:
            continue
        pool: Any = getattr(transport, "_pool", None)
        if not hasattr(pool, "_network_backend"):
            raise UpstreamUnavailable("this httpx cannot bound a relay by its deadline")
        pool._network_backend = backend


# The content codings an answer may come in despite the relay asking for none: zlib's
# window bits for each (deflate is tried as zlib, then raw, as httpx does).
_CODINGS: Final = {
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}


def _read_answer(name: str, response: httpx.Response) -> bytes:
    """The answer's body, at most `MAX_ANSWER_BYTES` once decoded, else
    `UpstreamUnavailable` (the card has gone, but an answer that large is no acquirer's,
    and reading it whole would hold it all in memory). Read raw and decoded here, each
    coding's output bounded: httpx decodes each chunk it reads whole, so a few hundred
    bytes of ``content-encoding: gzip, gzip`` took gigabytes (review 40). A coding
    other than gzip or deflate is refused: an answer the vault cannot read, it cannot
    mask."""
    codings = [
        coding.strip().lower()
        for value in response.headers.get_list("content-encoding")
        for coding in value.split(",")
    ]
    codings = [coding for coding in codings if coding and coding != "identity"]
    # A compressed answer of incompressible bytes is a little larger than it decodes to.
    bound = 2 * MAX_ANSWER_BYTES if codings else MAX_ANSWER_BYTES
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > bound:
            raise _too_large(name)
        chunks.append(chunk)
    content = b"".join(chunks)
    del chunks
    for coding in reversed(codings):
        content = _decode(name, content, coding, bound)
    if len(content) > MAX_ANSWER_BYTES:
        raise _too_large(name)
    return content


def _decode(name: str, data: bytes, coding: str, bound: int) -> bytes:
    """`data` decoded from `coding`, at most `bound` bytes of it, else `UpstreamUnavailable`."""
    wbits = _CODINGS.get(coding)
    if wbits is None:
        # Not named: the header is the upstream's, and the message goes to the caller.
        raise UpstreamUnavailable(
            f"the upstream of route {name!r} answered in a content coding the vault does not read"
        )
    for bits in (wbits, -zlib.MAX_WBITS) if coding == "deflate" else (wbits,):
        decoder = zlib.decompressobj(bits)
        try:
            decoded = decoder.decompress(data, bound + 1)
        except zlib.error:
            continue
        if len(decoded) > bound or decoder.unconsumed_tail:
            raise _too_large(name)
        return decoded
    raise UpstreamUnavailable(f"the upstream of route {name!r} answered a body it did not encode")


def _too_large(name: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the upstream of route {name!r} answered more than {MAX_ANSWER_BYTES} bytes"
    )


def _answer(name: str, content: bytes) -> Any:
    """The upstream's answer as JSON, or its text as ``{"body": ...}``. Raises
    `UpstreamUnavailable` for JSON nested deeper than `MAX_DEPTH` (or than the parser
    goes): the card has gone, but such an answer cannot be masked, so none is given
    (the caller's `relay` entry says upstream_unavailable)."""
    try:
        parsed: Any = json.loads(content)
    except RecursionError:
        parsed, deep = None, True
    except ValueError:
        # As UTF-8 whatever charset it declares: decoded as cp500 (EBCDIC), an ASCII
        # echo of the card passed the masking unseen (review 27).
        return {"body": content.decode("utf-8", "replace")}
    else:
        deep = nested_deeper_than(parsed)
    if deep:
        raise UpstreamUnavailable(
            f"the upstream of route {name!r} answered JSON nested deeper than {MAX_DEPTH} levels"
        )
    return parsed
