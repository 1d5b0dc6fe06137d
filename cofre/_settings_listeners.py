"""The listeners' sections of `cofre.settings.Settings`: the mTLS API server (its TLS,
deadlines, health and metrics ports) and the capture listener.

IN PCI SCOPE. Moved out of `cofre.settings` to keep that module small; import them from
`cofre.settings`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, IPvAnyNetwork, model_validator

from cofre._settings_section import _Section, check_allowance
from cofre.origins import every_interface, listener_origin

# The bounds of the capture listener's allowance of refusal entries from all addresses
# (`CaptureSettings.listener_refusal_entries_*`): at least one entry at once and one a
# day, at most 10,000 at once and 100 a second. Anyone on the internet can send the
# listener refused requests, so whatever is set the log grows at most ~8.6 million
# entries a day per worker from them (at the defaults, 200 then 20 a second, ~1.7
# million); past the allowance refusals are still answered, and counted.
MAX_LISTENER_REFUSAL_ENTRIES_BURST: Final = 10_000
MAX_LISTENER_REFUSAL_ENTRIES_PER_SECOND: Final = 100.0


class TLSVersion(StrEnum):
    TLS1_2 = "1.2"
    TLS1_3 = "1.3"


class ServerSettings(_Section):
    """The mTLS listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    # API worker processes, each with its own HSM sessions, database pool and group
    # committer, sharing the port (SO_REUSEPORT). None: one per CPU core. One Python
    # process is bound by its GIL to one core (docs/operations.md, Sizing).
    workers: int | None = Field(default=None, ge=1, le=256)
    # TLS 1.3 unless 1.2 is set explicitly (for clients that cannot do 1.3 yet).
    min_tls_version: TLSVersion = TLSVersion.TLS1_3
    ca_bundle: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    crl_file: Path | None = None
    # The ports officers' signed requests may name in their Host (`@authority`,
    # vault.officer_mfa): the port they dial. None: 443 (a load balancer or proxy on the
    # standard port) and `port`. Set it when officers come in by another port (a
    # port-forward, a proxy on 9443), or to one port when two vaults share a host name.
    officer_ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        default=None, min_length=1
    )
    # Read deadlines for a request (headers, then body), and the most connections one
    # client identity may hold open (a busy client's pool holds hundreds).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_connections_per_identity: int = Field(default=2000, ge=1)
    # The HTTP/1.1 parser: httptools (llhttp, in C) or h11 (pure Python, a few times the
    # CPU per request; kept as a fallback). Both get the same limits (api.connections).
    http_protocol: Literal["httptools", "h11"] = "httptools"
    # How often the CRL file is checked for a change (it is also reloaded on SIGHUP).
    crl_reload_seconds: float = Field(default=30.0, gt=0, le=3600)
    # /docs and /openapi.json: the whole API surface for any identity. `cofre dev` turns
    # them on; production leaves them off (docs/openapi.json is the same document).
    api_docs: bool = False
    # The plain-HTTP health listener (/livez, /readyz only: no card data, no identity)
    # for probes that cannot present a client certificate (the kubelet's). Off when no
    # port is set.
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # Prometheus `/metrics` (plain HTTP, no card data); off when no port is set.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # On SIGTERM or SIGINT: readiness fails at once, new connections are still accepted
    # for `drain_delay_seconds` (while load balancers notice), then the listener closes
    # and in-flight requests get up to `drain_timeout_seconds` to finish.
    drain_delay_seconds: float = Field(default=0.0, ge=0, le=300)
    drain_timeout_seconds: int = Field(default=25, gt=0, le=3600)
    # The addresses of load balancers that terminate TCP in front of this listener: a
    # connection from them is held to the TLS handshakes under way in all, not to one
    # address's share (session 39: all their clients are one address). Empty: none.
    load_balancers: list[IPvAnyNetwork] = Field(default=[], max_length=64)

    @model_validator(mode="after")
    def _balancers_are_not_everyone(self) -> ServerSettings:
        if any(network.prefixlen == 0 for network in self.load_balancers):
            raise ValueError("load_balancers cannot hold every address (a /0)")
        for network in self.load_balancers:  # peers are compared as IPv4 (rev39c)
            mapped = getattr(network.network_address, "ipv4_mapped", None)
            if mapped is not None:
                raise ValueError(f"load_balancers: write {network} as an IPv4 network")
        return self


class CaptureSettings(_Section):
    """The capture listener for browsers and apps (hosted card fields): server TLS only
    (a browser has no client certificate); the session's secret and origin stand in."""

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)  # None: no capture listener
    # Server certificate and key of the capture origin (default: the mTLS listener's).
    cert_file: Path | None = None
    key_file: Path | None = None
    # The origin browsers see this listener at (the hosted fields' origin); default
    # https://localhost:PORT for a loopback host, else https://HOST:PORT.
    public_origin: str | None = None
    # Development only: let a session name an http://localhost origin.
    allow_http_localhost: bool = False
    # Captures per session (brute force of its secret) and per client address.
    # The bounds of `policies.models.RateLimit` (one a day to 10^6 a second).
    session_per_second: float = Field(default=0.2, ge=1 / 86_400, le=1e6)
    session_burst: int = Field(default=10, ge=1, le=1_000_000_000)
    address_per_second: float = Field(default=2.0, ge=1 / 86_400, le=1e6)
    address_burst: int = Field(default=60, ge=1, le=1_000_000_000)
    # Database operations the listener runs at once per worker process; the rest are
    # answered 503 capture_busy. None: `database.pool_size`, half the pool (which holds
    # as many again), so anonymous traffic never holds the mTLS API's connections.
    max_in_flight: int | None = Field(default=None, ge=1, le=400)
    # Connections the listener holds at once per worker process (at most half the
    # process's open files: `cofre_cli.capture.capture_connections`); past it a new one
    # is closed at once. Anonymous connections never take the mTLS API's descriptors.
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    # Refusal entries of the whole listener (every address) written one by one per
    # worker process, `burst` at once then `per_second`; past it refusals are answered
    # as ever and counted in one `capture.requests_refused` entry (client `*`) a minute
    # (`api.capture`, review 28). A constant until session 42.
    listener_refusal_entries_burst: int = 200
    listener_refusal_entries_per_second: float = 20.0

    @model_validator(mode="after")
    def _listener_allowance_bounded(self) -> CaptureSettings:
        # Checked here, not by `Field` bounds, so that the error names the variable.
        why = (
            "at least the first refusals of a flood keep their own entries, and at most "
            "this many keeps what anyone on the internet adds to the audit log bounded"
        )
        check_allowance(
            "COFRE_CAPTURE__LISTENER_REFUSAL_ENTRIES",
            self.listener_refusal_entries_burst,
            self.listener_refusal_entries_per_second,
            max_burst=MAX_LISTENER_REFUSAL_ENTRIES_BURST,
            max_per_second=MAX_LISTENER_REFUSAL_ENTRIES_PER_SECOND,
            why=why,
        )
        return self

    @model_validator(mode="after")
    def _reachable_origin(self) -> CaptureSettings:
        # A wildcard host names no address a browser could reach: the hosted fields'
        # origin (frame-ancestors, CORS, the session's check) would be https://0.0.0.0.
        if self.port is not None and self.public_origin is None and every_interface(self.host):
            raise ValueError(
                f"COFRE_CAPTURE__HOST {self.host!r} listens on every interface: set "
                "COFRE_CAPTURE__PUBLIC_ORIGIN to the origin browsers reach it at"
            )
        return self

    def origin(self) -> str:
        """This listener's public origin."""
        if self.public_origin is not None:
            return self.public_origin.rstrip("/")
        return listener_origin(self.host, self.port)
