"""The capture listener's body bound, kept on the bytes that arrive (the capture review).

IN PCI SCOPE, sees card data in transit (the body it counts is the card). The capture
guard refused a body whose ``Content-Length`` passed the bound, but the listener's
parser (h11) frames a request that carries ``Transfer-Encoding: chunked`` as well by
its chunks: a body of any size announced as 100 bytes was read whole into memory and
parsed, by anyone on the internet. So a body must come with ``Content-Length`` alone,
within the bound, and the bytes the app reads are counted against it all the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

__all__ = ["closing", "declared_length", "framed_within", "limited"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Scope = MutableMapping[str, Any]
_CLOSE: Final = (b"connection", b"close")


class _BodyTooLarge(Exception):
    """Raised into the app past the bound; ``body_too_large`` is then set in the scope's
    state, and the listener answers 413 ``payload_too_large``."""


# Past any body a listener takes (and past what llhttp's 64-bit length holds).
_LONGEST_LENGTH = 1 << 64


def declared_length(text: str) -> int | None:
    """The length a ``Content-Length`` value `text` declares; None unless it is ASCII
    digits. Read by its digits, leading zeros dropped: llhttp passes any number of
    them, and `int()` raises past 4,300 digits (review 30b: a 500 before the request's
    identity, bucket or audit entry). Beyond 20 significant digits: `_LONGEST_LENGTH`.
    Whitespace around the digits is dropped as llhttp drops it (RFC 9110's optional
    whitespace; llhttp hands the value on with its trailing part): refused before
    review 30c, a length both parsers read the same."""
    text = text.strip(" \t")
    if not (text.isascii() and text.isdigit()):  # "²".isdigit(), int("²") raises
        return None
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= 20 else _LONGEST_LENGTH


def framed_within(headers: Mapping[str, str], limit: int) -> bool:
    """Whether a request's `headers` (lower-case names) frame its body by a
    ``Content-Length`` of at most `limit` bytes and by nothing else."""
    length = declared_length(headers.get("content-length", ""))
    return "transfer-encoding" not in headers and length is not None and length <= limit


def limited(receive: Receive, state: MutableMapping[str, Any], limit: int) -> Receive:
    """`receive`, raising `_BodyTooLarge` into the app past `limit` bytes of body, and
    setting ``body_read`` in `state` once the body was read whole (`closing`). The
    mTLS listener's guard bounds its bodies with this too (`api.guard`)."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                state["body_too_large"] = True
                raise _BodyTooLarge
            if not message.get("more_body", False):
                state["body_read"] = True
        return message

    return limited_receive


def closing(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The ``Connection: close`` header when the answer to the request of `scope` must
    end its connection: it carries ``Transfer-Encoding``, or it announced a body
    (a ``Content-Length`` other than 0) that was not read whole (``body_read``, set by
    `limited`). Else nothing: a browser's capture, and an API client's request
    whose body was read, keep their connection. Both listeners' guards call it
    (`api.capture`, `api.guard`: session 35)."""
    names = {name.lower(): value for name, value in scope["headers"]}
    length = declared_length(names.get(b"content-length", b"").decode("latin-1"))
    unread = bool(length) and not scope["state"].get("body_read", False)
    return [_CLOSE] if b"transfer-encoding" in names or unread else []
