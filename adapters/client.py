"""`CofreClient`: the typed HTTPS client the out-of-scope tier uses to talk to the vault.

OUT OF PCI SCOPE for what it receives: it has no detokenize call (only the masked one),
so the vault never sends it a PAN in clear, and relays send tokens that the vault
replaces inside the PCI zone. It does carry the PANs its caller hands to `tokenize`,
`tokenize_batch` and `lookup` to the vault, over mutual TLS with the adapter's own
client certificate, holding them only for the call: a process that calls those
transmits card data and is in scope for that (PCI DSS 4.0.1 scoping).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.errors import AdapterError, error_for


@dataclass(frozen=True)
class Token:
    token: str
    token_id: str
    format: str
    existing: bool


class CofreClient:
    """The vault's API, as this adapter's identity (its certificate's URI SAN)."""

    def __init__(
        self, base_url: str, *, cert: Path, key: Path, ca: Path, timeout: float = 15.0
    ) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self._http = httpx.Client(base_url=base_url, verify=context, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CofreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any | None = None) -> tuple[int, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise AdapterError(f"the vault is unreachable ({type(exc).__name__})") from None
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            problem = response.json()
            raise error_for(
                str(problem.get("code")),
                response.status_code,
                str(problem.get("detail") or problem.get("title")),
                problem.get("request_id"),
            )
        return response.status_code, response.json()

    @staticmethod
    def _token(data: dict[str, Any]) -> Token:
        return Token(
            token=data["token"],
            token_id=data["token_id"],
            format=data["format"],
            existing=data["existing"],
        )

    def tokenize(self, pan: str, token_format: str) -> Token:
        """Tokenize a PAN the caller received (for example from a card-entry form posted
        straight into this service). Keep it no longer than this call."""
        _, data = self._call("POST", "/v1/tokenize", {"pan": pan, "format": token_format})
        return self._token(data)

    def tokenize_batch(self, pans: list[str], token_format: str) -> list[Token]:
        _, data = self._call(
            "POST",
            "/v1/tokenize/batch",
            {"items": [{"pan": p, "format": token_format} for p in pans]},
        )
        return [self._token(r) for r in data["results"]]

    def detokenize_masked(self, token: str) -> str:
        _, data = self._call("POST", "/v1/detokenize-masked", {"token": token})
        return str(data["masked_pan"])

    def lookup(self, pan: str) -> list[Token]:
        _, data = self._call("POST", "/v1/lookup", {"pan": pan})
        return [self._token(t) for t in data["tokens"]]

    def relay(self, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Have the vault send `body` (tokens in it) to the route's upstream; return the
        upstream's status and its body as the vault returns it (PANs tokenized/masked)."""
        return self._call("POST", f"/v1/relay/{route}", body)
