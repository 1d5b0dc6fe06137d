"""Hosted card capture: the sessions a shop's backend opens, and the card a shopper's
browser sends to the vault's capture listener.

IN PCI SCOPE, holds card data (a `CardCapture` carries a `Pan` and may carry a card
security code). The shop's backend asks for a session over mutual TLS (operation
``capture``): it gets a session id, a client secret shown once, and an expiry. The
shop's page hands both to the hosted fields, an iframe served by the vault from its own
origin, which posts the card to the vault; the shop's page and backend only ever see
the token. A session is bound to:

- one exact web origin (scheme, host, port) that may frame the fields and call the
  capture endpoint (CSP ``frame-ancestors``, CORS and a check of the ``Origin`` header);
- the creating identity's token domain and formats: the token belongs to that domain;
- its secret, stored only as SHA-256 (a 256-bit random value needs no slow hash);
- a lifetime of at most 15 minutes and, by default, one capture.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from cofre import origins
from cofre.errors import CofreError
from vault.errors import CaptureRequestInvalid, InvalidOrigin, InvalidTTL, SecurityCodeNotAllowed
from vault.models import TokenRecord
from vault.pan import Pan

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MAX_TTL_SECONDS",
    "MAX_USES",
    "SESSION_ID_LENGTH",
    "CaptureResult",
    "CaptureSession",
    "CaptureSessionRequest",
    "CardCapture",
    "SessionCodeRule",
    "check_security_code",
    "hash_secret",
    "is_session_id",
    "new_secret",
    "new_session_id",
    "normalize_origin",
    "readable_by_session_origin",
    "refusal_origin",
    "secret_matches",
]

MAX_TTL_SECONDS: Final = 15 * 60
DEFAULT_TTL_SECONDS: Final = 10 * 60
MAX_USES: Final = 20
MAX_FORMATS: Final = 8
SESSION_ID_PREFIX: Final = "cs_"
SESSION_ID_LENGTH: Final = 35
_SESSION_ALPHABET: Final = string.ascii_lowercase
_SESSION_CHARS: Final = frozenset(_SESSION_ALPHABET)
_SECRET_PREFIX: Final = "cofre_cs_"  # noqa: S105 - a prefix that names the kind, not a secret
# The attribute a capture's refusal carries once the session's secret matched.
_SESSION_ORIGIN: Final = "cofre_capture_session_origin"


class SessionCodeRule(StrEnum):
    """Whether a session's captures carry the card security code (CVV2/CVC2)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    FORBIDDEN = "forbidden"


def normalize_origin(
    text: str, *, allow_http_localhost: bool = False, frame_ancestor: bool = False
) -> str:
    """Return `text` as an exact web origin, ``scheme://host[:port]`` (lower case, the
    default port dropped): `cofre.origins.normalize_origin`, the one rule the policy
    loader checks `capture_origins` by too.

    Raises `InvalidOrigin` for anything else (what `cofre.origins.normalize_origin`
    refuses, with its reason).
    """
    try:
        return origins.normalize_origin(
            text, allow_http_localhost=allow_http_localhost, frame_ancestor=frame_ancestor
        )
    except ValueError as exc:
        raise InvalidOrigin(str(exc)) from None


@contextmanager
def readable_by_session_origin(origin: str) -> Iterator[None]:
    """Mark each `CofreError` raised inside as a refusal the session's own `origin` may
    read (`refusal_origin`). Entered only once the session's secret matched: what is
    refused before (an unknown session, a wrong secret, a rate limit) is one answer to
    every origin, and nothing of the session leaks to a guess (review 27)."""
    try:
        yield
    except CofreError as exc:
        setattr(exc, _SESSION_ORIGIN, origin)
        raise


def refusal_origin(exc: BaseException) -> str | None:
    """The origin of the session whose secret matched before `exc` was raised, the one
    origin that may read the refusal (CORS), or None: no origin may."""
    origin = getattr(exc, _SESSION_ORIGIN, None)
    return origin if isinstance(origin, str) else None


def new_session_id() -> str:
    """A fresh session id: ``cs_`` and 32 random lower-case letters (150 bits). No
    digits, so no masker ever mistakes one for a card number in a log or audit entry."""
    return SESSION_ID_PREFIX + "".join(
        secrets.choice(_SESSION_ALPHABET) for _ in range(SESSION_ID_LENGTH - 3)
    )


def is_session_id(text: str) -> bool:
    """Whether `text` has the shape of a session id (checked before any lookup)."""
    return (
        len(text) == SESSION_ID_LENGTH
        and text.startswith(SESSION_ID_PREFIX)
        and set(text[3:]) <= _SESSION_CHARS
    )


def new_secret() -> tuple[str, bytes]:
    """A fresh client secret (256 random bits) and the hash to store."""
    secret = _SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def secret_matches(secret: str | None, stored: bytes) -> bool:
    """Whether `secret` hashes to `stored` (compared in constant time)."""
    if not secret or len(secret) > 128:
        return False
    return hmac.compare_digest(hash_secret(secret), bytes(stored))


def check_security_code(rule: SessionCodeRule, code: str | None) -> None:
    """Raise `SecurityCodeNotAllowed` for a code where the session's `rule` forbids one,
    and `CaptureRequestInvalid` for a missing one where it is required. (Its shape is
    `vault.card.SecurityCode`'s to check, and a format may forbid codes too.) The
    message never repeats the code."""
    if code is None or code == "":
        if rule is SessionCodeRule.REQUIRED:
            raise CaptureRequestInvalid("this capture session requires the card security code")
        return
    if rule is SessionCodeRule.FORBIDDEN:
        raise SecurityCodeNotAllowed(
            "this capture session takes no card security code; nothing was stored"
        )


@dataclass(frozen=True, slots=True)
class CaptureSessionRequest:
    """What a shop's backend asks for: its page's origin, the token formats a capture
    may produce (the first is the default), the lifetime and the captures allowed."""

    origin: str
    formats: tuple[str, ...]
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    max_uses: int = 1
    security_code: SessionCodeRule = SessionCodeRule.OPTIONAL

    def check(self) -> None:
        """Raise `CaptureRequestInvalid` or `InvalidTTL` for what no session may be."""
        if not 1 <= len(self.formats) <= MAX_FORMATS or len(set(self.formats)) != len(self.formats):
            raise CaptureRequestInvalid(f"name 1 to {MAX_FORMATS} different token formats")
        # The API's schema checks the types; bool is an int to Python.
        ttl = self.ttl_seconds
        if isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
            raise InvalidTTL(f"a capture session lives 1 to {MAX_TTL_SECONDS} seconds")
        uses = self.max_uses
        if isinstance(uses, bool) or not 1 <= uses <= MAX_USES:
            raise CaptureRequestInvalid(f"a capture session allows 1 to {MAX_USES} captures")


@dataclass(frozen=True, slots=True)
class CaptureSession:
    """A session as its creator sees it once; `secret` is never stored or shown again."""

    session_id: str
    origin: str
    formats: tuple[str, ...]
    expires_at: datetime
    max_uses: int
    security_code: SessionCodeRule
    secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class CardCapture:
    """One card from the hosted fields: the session it claims, where it came from, and
    the card. `origin` is the request's ``Origin`` header (None when absent); `frame`
    says the hosted fields (the vault's own origin) sent it on the session origin's
    behalf."""

    session_id: str
    secret: str | None = field(repr=False)
    origin: str | None
    client_address: str
    pan: Pan
    token_format: str | None = None
    expiry: str | None = None  # "MM/YY" or "YYYY-MM" (`vault.card.normalize_expiry`)
    name: str | None = field(default=None, repr=False)
    security_code: str | None = field(default=None, repr=False)
    frame: bool = False


@dataclass(frozen=True, slots=True)
class CaptureResult:
    """What the browser gets: the token, the masked number and the expiry
    (``YYYY-MM``)."""

    token: TokenRecord
    masked: str
    expiry: str | None
