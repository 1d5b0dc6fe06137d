"""The vault's side of tlog-witness: submit one add-checkpoint request over HTTP(S).

The only module of `witness` that speaks HTTP as a client (import-linter allows it
httpx). Transport failures become `WitnessUnreachable`; the answer's status, content
type and text are returned as they came for the publisher to judge.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from cofre.tls import client_context
from witness.errors import WitnessUnreachable


@dataclass(frozen=True, slots=True)
class WitnessAnswer:
    status: int
    content_type: str
    text: str


def _trust(ca_file: Path | None) -> ssl.SSLContext:
    """Only `ca_file` for a witness with a private CA, else certifi's public CAs: never
    a CA file the environment names (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, which httpx's
    own context read: an interception proxy's CA there answered for the witness), and
    no key log (`cofre.tls`; review 35)."""
    return client_context(ca_file)


def submit_checkpoint(
    url: str, body: bytes, *, timeout: float = 5.0, ca_file: Path | None = None
) -> WitnessAnswer:
    """POST `body` to `<url>/add-checkpoint` and return the answer. Raises
    `WitnessUnreachable` when no HTTP answer came."""
    verify = _trust(ca_file)
    try:
        response = httpx.post(
            url.rstrip("/") + "/add-checkpoint", content=body, timeout=timeout, verify=verify
        )
    except httpx.HTTPError as exc:
        raise WitnessUnreachable(f"witness {url} did not answer ({type(exc).__name__})") from None
    return WitnessAnswer(
        response.status_code,
        response.headers.get("content-type", ""),
        response.text[:4096],
    )


def latest_checkpoint(
    url: str, origin: str, *, timeout: float = 5.0, ca_file: Path | None = None
) -> str | None:
    """Return the witness's last cosigned checkpoint of the log `origin` (a signed note,
    c2sp.org/tlog-witness "monitor retrieval"), None when it has none (404). Raises
    `WitnessUnreachable` when it did not answer or answered otherwise."""
    verify = _trust(ca_file)
    origin_hash = hashlib.sha256(origin.encode()).hexdigest()
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/{origin_hash}/checkpoint", timeout=timeout, verify=verify
        )
    except httpx.HTTPError as exc:
        raise WitnessUnreachable(f"witness {url} did not answer ({type(exc).__name__})") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise WitnessUnreachable(f"witness {url} answered HTTP {response.status_code}")
    return response.text
