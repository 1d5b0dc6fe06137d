"""The vault's side of tlog-witness: submit one add-checkpoint request over HTTP(S).

The only module of `witness` that speaks HTTP as a client (import-linter allows it
httpx). Transport failures become `WitnessUnreachable`; the answer's status, content
type and text are returned as they came for the publisher to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from witness.errors import WitnessUnreachable


@dataclass(frozen=True, slots=True)
class WitnessAnswer:
    status: int
    content_type: str
    text: str


def submit_checkpoint(
    url: str, body: bytes, *, timeout: float = 5.0, ca_file: Path | None = None
) -> WitnessAnswer:
    """POST `body` to `<url>/add-checkpoint` and return the answer. Raises
    `WitnessUnreachable` when no HTTP answer came."""
    verify: bool | str = str(ca_file) if ca_file is not None else True
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
