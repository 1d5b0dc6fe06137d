"""The plain-HTTP health listener: ``/livez`` and ``/readyz`` on a port of their own.

IN PCI SCOPE (it runs in the vault process), but it serves no card data and needs no
identity: Kubernetes' kubelet cannot present a client certificate, so the probes cannot
reach the mTLS listener's health routes. Nothing else is routed here, no request body
is read, and a failing check answers with its stable code only (never its message),
so an unauthenticated caller learns which subsystem is down and nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from api.lifecycle import ManagedServer, Readiness, bind_reuse_port
from cofre.errors import CofreError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HealthApp:
    """A minimal ASGI app: GET/HEAD ``/livez`` (the event loop answers) and ``/readyz``
    (not draining, and `check_ready` passes: HSM, database, audit sequencer)."""

    def __init__(self, check_ready: Callable[[], dict[str, str]], readiness: Readiness) -> None:
        self._check_ready = check_ready
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path not in ("/livez", "/readyz"):
            await _answer(send, 404, {"status": "not_found"}, method)
        elif method not in ("GET", "HEAD"):
            await _answer(send, 405, {"status": "method_not_allowed"}, method)
        elif path == "/livez":
            await _answer(send, 200, {"status": "alive"}, method)
        else:
            status, body = await self._ready()
            await _answer(send, status, body, method)

    async def _ready(self) -> tuple[int, dict[str, Any]]:
        if self._readiness.draining:
            return 503, {"status": "draining"}
        try:
            checks = await asyncio.to_thread(self._check_ready)
        except CofreError as exc:
            return 503, {"status": "unready", "code": exc.code}
        return 200, {"status": "ready", "checks": checks}


async def _answer(send: Send, status: int, body: dict[str, Any], method: str) -> None:
    payload = json.dumps(body, sort_keys=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})


def build_health_server(
    check_ready: Callable[[], dict[str, str]],
    readiness: Readiness,
    host: str,
    port: int,
    *,
    log_config: dict[str, Any] | None = None,
    reuse_port: bool = False,
) -> ManagedServer:
    """Return a configured (not yet started) plain-HTTP server for the probes; with
    `reuse_port`, on its own SO_REUSEPORT socket (every worker answers probes)."""
    config = uvicorn.Config(
        HealthApp(check_ready, readiness),
        host=host,
        port=port,
        log_config=log_config,
        access_log=False,
        server_header=False,
        lifespan="off",
        timeout_keep_alive=5,
        # No forwarded header is trusted (uvicorn trusts X-Forwarded-For from loopback
        # by default): the client address is the TCP peer's, never text a caller chose.
        proxy_headers=False,
        forwarded_allow_ips=[],
        # Probes are tiny; refuse anything that looks like a real workload.
        limit_concurrency=32,
        h11_max_incomplete_event_size=8192,
    )
    server = ManagedServer(config)
    if reuse_port:
        server.sockets = bind_reuse_port(host, port)
    return server
