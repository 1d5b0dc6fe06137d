"""The capture listener's server: uvicorn over server TLS only, with the mTLS listener's
deadlines (`api.capture` re-exports `build_capture_server`).

IN PCI SCOPE (the capture listener receives card data).
"""

from __future__ import annotations

import ssl
from pathlib import Path as FilePath
from typing import Any

from fastapi import FastAPI

from api._uvicorn_config import listener_config
from api.connections import guarded_protocol
from api.errors import ApiError
from api.handshake import HandshakeFailures
from api.lifecycle import ManagedServer
from api.observability import Telemetry
from api.tls import CAPTURE_MIN_TLS_VERSION, TLS12_CIPHERS

__all__ = ["build_capture_server"]


def build_capture_server(
    app: FastAPI,
    host: str,
    port: int,
    *,
    cert: FilePath,
    key: FilePath,
    log_config: dict[str, Any] | None = None,
    header_timeout: float = 10.0,
    body_timeout: float = 10.0,
    telemetry: Telemetry | None = None,
    max_connections_per_address: int = 256,  # a carrier's NAT holds many shoppers
    max_connections: int = 1024,
) -> ManagedServer:
    """A configured (not started) uvicorn server for the capture listener: server TLS
    only (no client certificate is asked for: browsers have none), TLS 1.2 or newer
    with forward-secret AEAD suites, the same handshake and read deadlines as the mTLS
    listener. Its failed handshakes are logged and, with `telemetry`, counted as the
    ``capture`` listener's (it runs on a loop of its own). It holds at most
    `max_connections_per_address` connections of a client address (IPv6: of a /64) and
    `max_connections` in all: it shares its process's file descriptors with the mTLS
    listener (session 35).

    Raises `ApiError` when a TLS file is missing.
    """
    for path in (cert, key):
        if not path.is_file():
            raise ApiError(f"TLS file not found: {path}")
    config = listener_config(
        app,
        host,
        port,
        http=guarded_protocol(
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections_per_identity=max_connections_per_address,
            by_address=True,  # no client certificates here
            max_connections=max_connections,
            # Browsers, not a hot path: the parser its tests were written against.
            http="h11",
        ),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=log_config,
        timeout_keep_alive=15,
    )
    config.load()
    context = config.ssl
    assert context is not None  # noqa: S101 - load() builds it from the files above
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_2 if CAPTURE_MIN_TLS_VERSION == "1.2" else ssl.TLSVersion.TLSv1_3
    )
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    server = ManagedServer(config)
    server.handshake_timeout = header_timeout  # `build_server`'s reason
    # Handshakes under way (not yet counted by the bounds above) hold a descriptor each:
    # at most a quarter of `max_connections` more (16 at least: the server's side of a
    # handshake ends a moment after the client's), and of those an address's share, a
    # quarter at most: one address's silent connections must not fill them all and
    # keep every shopper out (review 35b).
    pending = max(16, max_connections // 4)
    server.handshake_bound = (pending, max(1, min(pending // 4, max_connections_per_address)))
    server.handshakes = HandshakeFailures(telemetry, listener="capture")
    return server
