"""Serving the app over mutual TLS with uvicorn.

IN PCI SCOPE. TLS 1.2+ (1.3 preferred, floor configurable), client certificates
required and verified against the configured CA bundle, CRL checking when a CRL is
configured; the peer certificate reaches the app through `api.tls`.
"""

from __future__ import annotations

import json
import logging
import logging.config
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from fastapi import FastAPI

from api._descriptor_bounds import mtls_bounds
from api._uvicorn_config import listener_config
from api.app import add_ready_check
from api.balance import WorkerLoads
from api.connections import guarded_protocol
from api.crl import CrlWatcher
from api.errors import ApiError
from api.lifecycle import ManagedServer, bind_reuse_port
from api.tls import harden_server_context
from cofre.redaction import mask_pan_like_or_withhold

_log = structlog.get_logger("cofre.tls")


class MaskingFormatter(logging.Formatter):
    """stdlib log records (uvicorn's own, tracebacks included) as one JSON object per
    line, shaped like structlog's (``timestamp``, ``level``, ``logger``, ``event``), with
    PANs masked: a log pipeline parses every line of the process the same way. A worker
    of several names itself in each line, as its structlog lines do."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return mask_pan_like_or_withhold(json.dumps(line, sort_keys=True))


def log_config(level: str, *, worker: int | None = None) -> dict[str, Any]:
    """The stdlib logging configuration of uvicorn's loggers (JSON lines on stderr; a
    worker of several passes its index)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"masked": {"()": MaskingFormatter, "worker": worker}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "masked",
                "stream": "ext://sys.stderr",
            }
        },
        # Every other stdlib logger (asyncio's exception handler, OpenTelemetry's
        # exporters, SQLAlchemy): the same JSON line, masked, with the worker; not
        # Python's last-resort handler (plain text, no mask).
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            # Per-request logging is ours (route templates, masked); uvicorn's access log
            # would print raw paths.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca_bundle: Path
    crl: Path | None = None


def build_server(
    app: FastAPI,
    host: str,
    port: int,
    tls: TLSFiles,
    *,
    min_tls_version: str = "1.3",
    log_level: str = "INFO",
    graceful_timeout: int | None = None,
    crl_reload_seconds: float = 30.0,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    max_connections_per_identity: int = 2000,
    load_balancers: Sequence[IPv4Network | IPv6Network] = (),
    http_protocol: str = "httptools",
    reuse_port: bool = False,
    loads: WorkerLoads | None = None,
    worker: int | None = None,
    open_files: int | None = None,
) -> ManagedServer:
    """Return a configured (not yet started) uvicorn server for `app`; on stop,
    in-flight requests get `graceful_timeout` seconds (None: as long as they take).
    With a CRL, the server's `crl_watcher` reloads it when the file changes (polled
    every `crl_reload_seconds`) into the TLS context and into the app's request guard
    (which refuses a revoked certificate on connections opened before the revocation),
    and adds its expiry to the app's readiness checks. The TLS handshake must end
    within `header_timeout` seconds, and a request's headers and body must arrive
    within `header_timeout` / `body_timeout` seconds, and one identity may hold
    `max_connections_per_identity` connections (`api.connections`), within the bounds
    `api._descriptor_bounds.mtls_bounds` draws from `open_files` (None: the process's
    soft limit of open files), connections from `load_balancers` held to the handshake
    places in all rather than one address's share; `http_protocol`
    is the parser (``httptools`` or ``h11``). With `reuse_port` the server listens on
    its own socket bound
    with SO_REUSEPORT, so several worker processes share the port and the kernel spreads
    new connections across them (`bind_reuse_port`); `loads` is then the worker's slot
    in the node's requests in flight, which evens the load out when the kernel's spread
    does not (`api.balance`), and `worker` its index in uvicorn's log lines.

    Raises `ApiError` when a TLS file is missing or the port cannot be bound.
    """
    for path in (tls.cert, tls.key, tls.ca_bundle, *([tls.crl] if tls.crl else [])):
        if not path.is_file():
            raise ApiError(f"TLS file not found: {path}")
    bounds = mtls_bounds(max_connections_per_identity, open_files)
    config = listener_config(
        app,
        host,
        port,
        http=guarded_protocol(
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections_per_identity=bounds.per_identity,
            http=http_protocol,
            loads=loads,
            max_connections=bounds.max_connections,
        ),
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        ssl_ca_certs=str(tls.ca_bundle),
        log_config=log_config(log_level, worker=worker),
        timeout_keep_alive=30,
        timeout_graceful_shutdown=graceful_timeout,
    )
    config.load()
    assert config.ssl is not None  # noqa: S101 - load() builds it from the files above
    harden_server_context(config.ssl, min_version=min_tls_version, crl_check=tls.crl is not None)
    server = ManagedServer(config)
    server.loads = loads
    # The handshake gets the header deadline too: a peer that never starts TLS is
    # closed as soon as one that never finishes its headers.
    server.handshake_timeout = header_timeout
    # And handshakes under way are bounded, in all and per address (session 37: with
    # none, silent connections from anyone took the worker's descriptors).
    server.handshake_bound = bounds.handshakes
    # But a load balancer that terminates TCP is one address for all its clients: its
    # connections count in all only (session 39, `COFRE_SERVER__LOAD_BALANCERS`).
    server.handshake_exempt = tuple(load_balancers)
    if reuse_port:
        server.sockets = bind_reuse_port(host, port)
    if tls.crl is not None:
        # The app's guard checks each request against what the watcher loads: a
        # certificate revoked after its connection's handshake is refused on it.
        watcher = CrlWatcher(tls.crl, config.ssl, app.state.revoked_certificates)
        watcher.reload()
        watcher.start(crl_reload_seconds)
        server.crl_watcher = watcher
        add_ready_check(app, "crl", watcher.check)
    return server


def reload_server_certificate(server: ManagedServer, tls: TLSFiles) -> None:
    """Put the server certificate and key now in `tls`'s files into force for new
    connections (SIGHUP; established connections keep theirs).

    The pair is first loaded into a scratch context, so a mismatched or half-written
    pair raises `ApiError` and leaves the serving context untouched. The client CA
    bundle is not reloaded: OpenSSL can add trust anchors to a live context but never
    remove one, so a CA change needs a (draining) restart.
    """
    context = server.config.ssl
    if context is None:
        raise ApiError("the server has no TLS context to reload")
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(str(tls.cert), str(tls.key))
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ApiError(
            f"the server certificate was not reloaded ({type(exc).__name__}): {tls.cert}"
        ) from None
    certificate = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    _log.info(
        "server certificate reloaded",
        file=str(tls.cert),
        serial=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc.isoformat(),
    )


class BackgroundServer:
    """A server in a thread (tests and `cofre dev` use it; `cofre serve` runs in the
    foreground)."""

    def __init__(self, server: ManagedServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=server.sockets), name="cofre-api", daemon=True
        )

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise ApiError("the API server stopped during start-up")
            deadline.wait(0.02)
            waited += 0.02
            if waited > timeout:
                raise ApiError("the API server did not start in time")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving; wait for the requests under way at most `timeout` seconds."""
        self.server.should_exit = True
        self._thread.join(timeout=timeout)
        watcher = getattr(self.server, "crl_watcher", None)
        if watcher is not None:
            watcher.stop()
