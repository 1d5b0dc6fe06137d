"""The uvicorn configuration every listener of ours starts from (the mTLS API, the
capture listener, the health port): what must hold on each is written once here, so a
listener added later cannot leave one out.

IN PCI SCOPE.
"""

from __future__ import annotations

import asyncio
from os import PathLike
from typing import Any

import uvicorn

__all__ = ["listener_config"]


def listener_config(
    app: Any,
    host: str,
    port: int,
    *,
    http: type[asyncio.Protocol],
    log_config: dict[str, Any] | None,
    timeout_keep_alive: int,
    ssl_certfile: str | PathLike[str] | None = None,
    ssl_keyfile: str | PathLike[str] | None = None,
    ssl_ca_certs: str | PathLike[str] | None = None,
    timeout_graceful_shutdown: int | None = None,
) -> uvicorn.Config:
    """A uvicorn configuration for `app` on `host`:`port`, with the listener's own
    protocol class, logging (None: none of uvicorn's), keep-alive, TLS files and drain
    time, and what every listener holds to: no access log (ours is per request, by
    route template and masked; uvicorn's would print raw paths), no ``Server`` header,
    no lifespan, no WebSocket and no forwarded header."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_ca_certs=ssl_ca_certs,
        log_config=log_config,
        access_log=False,
        server_header=False,
        date_header=True,
        timeout_keep_alive=timeout_keep_alive,
        lifespan="off",
        # No WebSocket: nothing here speaks it, and an upgrade would bypass the guard
        # (no identity, no limit, no entry) or log an error per try (review 36).
        ws="none",
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        # No forwarded header is trusted (uvicorn trusts X-Forwarded-For from loopback
        # by default): the client address is the TCP peer's, never text a caller chose.
        proxy_headers=False,
        forwarded_allow_ips=[],
        # No cap on connections: the guard's per-identity cap is the bound (a total cap
        # is what idle connections filled on the health port), and each connection is
        # closed unless its head comes in time.
        limit_concurrency=None,
    )
