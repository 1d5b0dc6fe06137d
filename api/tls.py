"""The bridge from the TLS connection to the app: the verified client certificate goes
into the ASGI ``tls`` scope extension, and the caller's identity is its SAN URI.

IN PCI SCOPE. uvicorn 0.54 does not expose the peer certificate to the application (it
sends no ASGI TLS extension). `TLSIdentityHttpToolsProtocol` (and its h11 twin
`TLSIdentityH11Protocol`), selected with uvicorn's ``http=`` setting, reads it from the SSL
object in ``connection_made`` and wraps the app so every request on that connection
carries it in ``scope["extensions"]["tls"]`` in the ASGI TLS extension's shape. This
couples to uvicorn's internals (the protocols' ``app``, ``connection_made``), which is
why uvicorn is pinned and the API tests over real mutual TLS (``tests/api/test_api.py``,
``test_identity_comes_from_the_certificate_not_headers`` first) fail loudly if the
identity goes missing.

The identity never comes from a header: a request whose connection carried no verified
certificate has no identity, whatever it sends.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import IdentityAmbiguous, IdentityMissing
from vault.service import HexDigest, Source

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

_TLS_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
# The TLS 1.2 suites both listeners offer (forward secrecy, AEAD only; TLS 1.3's suites
# are all AEAD and not set here). Named once so that the evidence bundle's
# `tls/settings.json` states what the listeners are given (`cofre_cli.wiring`).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
# The capture listener's floor: browsers, some of which cannot do TLS 1.3 yet.
CAPTURE_MIN_TLS_VERSION: Final = "1.2"


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """Return the ASGI TLS extension dict for a connection, or None if not TLS."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": cipher[0] if cipher else None,
    }


# Where `with_tls_extension` keeps the connection's `Source` in the TLS extension (a
# key of Cofre's own: the ASGI extension has no place for it).
SOURCE_KEY: Final = "cofre_source"


def connection_source(ssl_object: ssl.SSLObject, peername: Any) -> Source:
    """A connection's origination for its audit entries: the TCP peer's address (a load
    balancer's, behind one: no ``X-Forwarded-For`` is believed, anyone can send one)
    and the SHA-256 of the client certificate's DER, as the entry of a refused
    certificate names it (``cert_sha256``)."""
    der = ssl_object.getpeercert(binary_form=True)
    address = str(peername[0]) if isinstance(peername, tuple) and peername else None
    certificate = HexDigest(hashlib.sha256(der).hexdigest()) if der else None
    return Source(address=address, certificate=certificate)


def with_tls_extension(app: ASGIApp, transport: Any) -> ASGIApp:
    """`app`, putting the connection's ASGI TLS extension into every request's scope
    (read once per connection: the certificate cannot change on it), with the
    connection's `Source` (hashed once per connection, not per request: issue 21)."""
    ssl_object = transport.get_extra_info("ssl_object")
    extension = tls_extension(ssl_object)
    if extension is None:
        return app
    extension[SOURCE_KEY] = connection_source(ssl_object, transport.get_extra_info("peername"))

    async def with_tls(scope: Scope, receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = extension
        await app(scope, receive, send)

    return with_tls


class TLSIdentityH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the client certificate in the ASGI scope."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.app = with_tls_extension(self.app, transport)


class TLSIdentityHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: a fraction of h11's CPU per request),
    plus the client certificate in the ASGI scope, as `TLSIdentityH11Protocol`."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.app = with_tls_extension(self.app, transport)


def peer_certificate(scope: Scope) -> str | None:
    """The verified client certificate (PEM) of the connection, or None."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return str(chain[0]) if chain else None


def source_from_scope(scope: Scope) -> Source | None:
    """The connection's `Source` (`with_tls_extension`), or None without TLS."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    source = tls.get(SOURCE_KEY)
    return source if isinstance(source, Source) else None


def identity_from_scope(scope: Scope) -> str:
    """Return the caller's identity: the one URI SAN of the verified client certificate.

    Raises `IdentityMissing` when the connection carried none, or `identity_from_pem`'s
    errors.
    """
    pem = peer_certificate(scope)
    if pem is None:
        raise IdentityMissing("no verified client certificate on this connection")
    return identity_from_pem(pem)


@functools.lru_cache(maxsize=256)
def identity_from_pem(pem: str) -> str:
    """The URI SAN of a client certificate. Memoized: a pure function of the bytes, and
    parsing the certificate on every request of a keep-alive client cost more than the
    rest of the identity check (an error is raised again each time, never cached).

    Raises `IdentityMissing` for a certificate that is a CA (``CA:TRUE``), lacks the
    clientAuth extended key usage or has no URI SAN, and `IdentityAmbiguous` for one with
    more than one URI SAN (which one would be the caller is not for us to guess).
    """
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    extensions = cert.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise IdentityMissing("a CA certificate (CA:TRUE) is not a client identity")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise IdentityMissing("the certificate lacks the clientAuth extended key usage")
    try:
        sans = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityMissing("the client certificate has no subject alternative name") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityMissing("the client certificate has no URI subject alternative name")
    if len(uris) > 1:
        raise IdentityAmbiguous(
            f"the client certificate names {len(uris)} URI identities; it must name one"
        )
    return str(uris[0])


@functools.lru_cache(maxsize=256)
def certificate_summary(pem: str) -> tuple[str, str, str]:
    """The subject (RFC 4514), the serial and the SHA-256 fingerprint (lowercase hex) of
    a certificate: what the audit entry of a refused certificate names."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return (
        cert.subject.rfc4514_string(),
        format(cert.serial_number, "x"),
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def harden_server_context(
    context: ssl.SSLContext, *, min_version: str, crl_check: bool = False
) -> None:
    """Apply Cofre's TLS policy to uvicorn's server context: client certificates
    required, a TLS floor (1.3 unless 1.2 is asked for), no compression or
    renegotiation, and CRL checking of the client's leaf certificate when `crl_check`
    (the CRL itself is loaded by `api.crl.CrlWatcher`)."""
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    if crl_check:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
