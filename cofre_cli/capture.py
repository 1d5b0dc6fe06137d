"""Wiring the capture listener (hosted card fields): its app and its server.

IN PCI SCOPE (wiring). The listener serves browsers over server TLS only, beside the
mTLS listener, in the same process (`cofre serve`, `cofre dev`), when
`COFRE_CAPTURE__PORT` is set.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import structlog

from api._capture_slots import CaptureSlots
from api.capture import CaptureState, build_capture_server, create_capture_app
from api.lifecycle import bind_reuse_port
from api.observability import Telemetry
from api.server import BackgroundServer, log_config
from api.tls import CAPTURE_MIN_TLS_VERSION, TLS12_CIPHERS
from cofre.errors import ConfigurationError
from cofre.settings import Settings
from policies.models import RateLimit
from vault.capture import normalize_origin
from vault.errors import InvalidOrigin
from vault.service import VaultService

_log = structlog.get_logger("cofre.capture")


def capture_origin(settings: Settings) -> str:
    """The capture listener's origin as browsers send it in ``Origin`` (lower case, the
    default port dropped): the hosted fields' frame and CORS compare it as a string.

    Raises `ConfigurationError` when `COFRE_CAPTURE__PUBLIC_ORIGIN` is not an https
    origin (a path, a wildcard, http), or, when it is not set, when the one made from
    `COFRE_CAPTURE__HOST` is not (a name with ``_``, a zone id): naming the setting
    the operator has to change."""
    setting = (
        "COFRE_CAPTURE__PUBLIC_ORIGIN"
        if settings.capture.public_origin is not None
        else "COFRE_CAPTURE__HOST (no COFRE_CAPTURE__PUBLIC_ORIGIN is set)"
    )
    try:
        return normalize_origin(settings.capture.origin())
    except InvalidOrigin as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


def capture_places(settings: Settings) -> int:
    """The capture listener's share of its worker's database pool: the database
    operations it runs at once (`COFRE_CAPTURE__MAX_IN_FLIGHT`, by default
    `pool_size`, half of a pool that holds as many again).

    Raises `ConfigurationError` for a share that leaves the mTLS API no connection."""
    pool = 2 * settings.database.pool_size  # `vault.storage.database`: max_overflow too
    places = settings.capture.max_in_flight or settings.database.pool_size
    if places >= pool:
        raise ConfigurationError(
            f"COFRE_CAPTURE__MAX_IN_FLIGHT {places} leaves the mTLS API none of the "
            f"{pool} database connections of a worker: set it below {pool}"
        )
    return places


def capture_connections(settings: Settings, open_files: int | None = None) -> int:
    """The capture listener's connections at once per worker process:
    `COFRE_CAPTURE__MAX_CONNECTIONS`, or a quarter of the process's soft limit of open
    files (`open_files`; by default read from the process) when that is less. Each
    connection is a descriptor of the process the mTLS listener, the database pool and
    the HSM share (session 35): anonymous ones never take more than a quarter. Until
    session 38 they took up to half, and the mTLS listener's connections may take the
    other half (`api._descriptor_bounds`): both listeners flooded at once (no
    certificate needed on either) left no descriptor for the database pool or the HSM
    (review rl38)."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_files = 1 << 30 if open_files == resource.RLIM_INFINITY else open_files
    return max(1, min(settings.capture.max_connections, open_files // 4))


def capture_app(
    settings: Settings, service: VaultService, telemetry: Telemetry | None = None
) -> Any:
    """The capture listener's ASGI app for `service`, with the configured limits and
    share of the database pool (its refusals for want of a place counted into
    `telemetry`).

    Raises `ConfigurationError` as `capture_places` does."""
    capture = settings.capture
    return create_capture_app(
        CaptureState(
            service=service,
            public_origin=capture_origin(settings),
            per_session=RateLimit(
                per_second=capture.session_per_second, burst=capture.session_burst
            ),
            per_address=RateLimit(
                per_second=capture.address_per_second, burst=capture.address_burst
            ),
            allow_http_localhost=capture.allow_http_localhost,
            slots=CaptureSlots(capture_places(settings), telemetry),
            listener_refusals=RateLimit(
                per_second=capture.listener_refusal_entries_per_second,
                burst=capture.listener_refusal_entries_burst,
            ),
        )
    )


def start_capture_listener(
    settings: Settings, app: Any, *, worker: int | None = None, telemetry: Telemetry | None = None
) -> BackgroundServer | None:
    """Start the capture listener in a thread when `COFRE_CAPTURE__PORT` is set (the
    caller stops it after the mTLS listener has drained); None when it is not. In a
    `worker` of several (`cofre_cli.workers`) on its own SO_REUSEPORT socket, as the
    API listener, and named in its log lines; its failed handshakes counted into
    `telemetry`.

    Raises `ConfigurationError` without a certificate for it, `ApiError` when a TLS
    file is missing or the listener does not start.
    """
    capture = settings.capture
    if capture.port is None:
        return None
    cert = capture.cert_file or settings.server.cert_file
    key = capture.key_file or settings.server.key_file
    if cert is None or key is None:
        raise ConfigurationError("set COFRE_CAPTURE__CERT_FILE and COFRE_CAPTURE__KEY_FILE")
    managed = build_capture_server(
        app,
        capture.host,
        capture.port,
        cert=Path(cert),
        key=Path(key),
        log_config=log_config(settings.log_level, worker=worker),
        header_timeout=settings.server.header_timeout_seconds,
        telemetry=telemetry,
        max_connections=capture_connections(settings),
    )
    if worker is not None:
        managed.sockets = bind_reuse_port(capture.host, capture.port)
    server = BackgroundServer(managed)
    server.start()
    _log.info("capture listener started", origin=capture_origin(settings), host=capture.host)
    return server


def capture_tls_evidence(settings: Settings) -> dict[str, str] | None:
    """What an evidence bundle's `tls/settings.json` says of the capture listener (None
    when none is configured): it is the listener where cards cross the internet (PCI
    DSS 4.2.1), so its floor, the absence of client certificates and its certificate
    are stated beside the mTLS listener's, from the values `api.capture` is given."""
    capture = settings.capture
    if capture.port is None:
        return None
    cert = capture.cert_file or settings.server.cert_file
    return {
        "origin": capture.origin(),
        "min_tls_version": CAPTURE_MIN_TLS_VERSION,
        "client_certificates": "none (browsers): a session's secret and origin stand in",
        "ciphers": f"{TLS12_CIPHERS} (TLS 1.2); TLS 1.3 suites",
        "certificate": "" if cert is None else str(cert),
        "compression": "off",
        "renegotiation": "off",
    }


def capture_certificate(settings: Settings) -> Path | None:
    """The capture origin's own certificate file, when it has one apart from the mTLS
    listener's (which the evidence lists already)."""
    capture = settings.capture
    if capture.port is None or capture.cert_file is None:
        return None
    return Path(capture.cert_file)
