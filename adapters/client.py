"""`CofreClient`: the typed HTTPS client the out-of-scope tier uses to talk to the vault.

OUT OF PCI SCOPE. No method takes or returns a clear PAN: there is no tokenize or lookup
(both send one) and no full detokenize (it returns one), only the masked reveal, the
relay, whose tokens the vault replaces with PANs inside the PCI zone, and capture
sessions, through which the shopper's browser sends the card to the vault itself. The vault's policy
enforces the same (`scope = "out"` refuses those operations at load). It speaks mutual
TLS with the adapter's own client certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from adapters.errors import AdapterError, error_for


@dataclass(frozen=True)
class CaptureSession:
    """A hosted-fields session for one checkout page: hand `session_id` and
    `client_secret` to that page (never log the secret; it is shown once), which loads
    ``capture.js`` from `capture_origin` (docs/capture.md)."""

    session_id: str
    client_secret: str = field(repr=False)
    origin: str
    expires_at: str
    capture_origin: str | None


def _mtls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The adapter's TLS to the vault: the vault verified against `ca` only (never a CA
    file the environment names), its name checked, TLS 1.2 or newer, the adapter's own
    certificate, and no key log. `ssl.create_default_context` wrote every session
    secret to the file ``SSLKEYLOGFILE`` names (review 35: with a capture, the
    adapter's requests and the vault's answers, the tokens among them, read in clear);
    `ssl.SSLContext` reads no environment. `cofre.tls.client_context`'s rules, copied:
    this tier imports nothing of the vault's."""
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname are its defaults.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


class CofreClient:
    """The vault's API, as this adapter's identity (its certificate's URI SAN)."""

    def __init__(
        self, base_url: str, *, cert: Path, key: Path, ca: Path, timeout: float = 15.0
    ) -> None:
        context = _mtls_context(cert, key, ca)
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
        if not response.content:
            return response.status_code, None  # 204, 205, 304 relayed: no body
        return response.status_code, response.json()

    def detokenize_masked(self, token: str) -> str:
        _, data = self._call("POST", "/v1/detokenize-masked", {"token": token})
        return str(data["masked_pan"])

    def relay(self, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Have the vault send `body` (tokens in it) to the route's upstream; return the
        upstream's status and its body as the vault returns it (PANs tokenized/masked),
        None for a status without a body (204, 205, 304)."""
        return self._call("POST", f"/v1/relay/{route}", body)

    def create_capture_session(
        self,
        origin: str,
        formats: tuple[str, ...] = ("pan_bin6_last4",),
        *,
        ttl_seconds: int = 600,
        max_uses: int = 1,
        security_code: str = "optional",
    ) -> CaptureSession:
        """Open a hosted-fields session for the checkout page at `origin` (this
        identity needs the ``capture`` operation). The card then goes from the
        shopper's browser to the vault; this tier only ever gets the token."""
        _, data = self._call(
            "POST",
            "/v1/capture-sessions",
            {
                "origin": origin,
                "formats": list(formats),
                "ttl_seconds": ttl_seconds,
                "max_uses": max_uses,
                "security_code": security_code,
            },
        )
        return CaptureSession(
            session_id=str(data["session_id"]),
            client_secret=str(data["client_secret"]),
            origin=str(data["origin"]),
            expires_at=str(data["expires_at"]),
            capture_origin=data.get("capture_origin"),
        )
