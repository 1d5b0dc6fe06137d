"""The TLS contexts Cofre builds itself: as a client (the relay, the officers' CLI, the
witness client, the OTLP/HTTP exporter) and as a server (the witness).

IN PCI SCOPE. Each context verifies its peer's certificate and name, speaks TLS 1.2 or
newer, trusts the CA file its configuration names (else certifi's public CAs), never a
CA file the environment names (``SSL_CERT_FILE``, ``SSL_CERT_DIR``), and writes no key
log whatever ``SSLKEYLOGFILE`` says. `ssl.create_default_context` honours that variable
(and urllib3 copies it): set in a process's environment (a debugging session's
leftover, a base image's default), every session secret of the process went in clear
to the file it names, and with a capture of the traffic anyone who read it read the
officers' MFA-signed requests and what they returned (review 35). The contexts are
made with `ssl.SSLContext` itself, which reads no environment, so no such file is even
created. The adapter tier's context (`adapters.client`) copies these rules, as it
imports nothing of ours; uvicorn makes the vault's listeners' with `ssl.SSLContext` too.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

__all__ = ["client_context", "server_context", "without_key_log"]


def without_key_log(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, writing no TLS key log from now on (a file it was given, by
    ``SSLKEYLOGFILE`` through `ssl.create_default_context`, is no longer written)."""
    context.keylog_filename = None  # type: ignore[assignment] # typeshed says str only
    return context


def client_context(
    cafile: Path | str | None, *, cert: Path | str | None = None, key: Path | str | None = None
) -> ssl.SSLContext:
    """A TLS client context: the server's certificate verified against `cafile` only
    (None: certifi's public CAs), its name checked, TLS 1.2 or newer, no compression or
    renegotiation, no key log; with `cert` and `key`, the client's own certificate.

    Raises `OSError` or `ssl.SSLError` when a file cannot be read or loaded.
    """
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname are its defaults.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_verify_locations(cafile=str(cafile) if cafile is not None else certifi.where())
    if cert is not None:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    return context


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A TLS server context with `cert` and `key`: TLS 1.2 or newer, no compression or
    renegotiation, no key log, no client certificate asked for.

    Raises `OSError` or `ssl.SSLError` when a file cannot be read or loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(str(cert), str(key))
    return context
