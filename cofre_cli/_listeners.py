"""The node's listening ports, checked against each other before anything binds.

IN PCI SCOPE (wiring). A worker binds the mTLS, health and capture ports with
SO_REUSEPORT (`api.lifecycle.bind_reuse_port`), so two of this node's listeners set to
one port do not fail with "address in use": the kernel takes both and splits the
connections between them. With `COFRE_SERVER__HEALTH_PORT` equal to
`COFRE_SERVER__PORT`, some clients' TLS handshakes reached the plain-HTTP health
listener and some kubelet probes the TLS one (session 33). Worker N's metrics listener
is on `COFRE_SERVER__METRICS_PORT` + N, a range that can cover another listener's port
only once the worker count is known, hence here rather than in the settings.
"""

from __future__ import annotations

import contextlib

from api.lifecycle import claim_port
from cofre.errors import ConfigurationError
from cofre.settings import Settings

__all__ = ["check_listener_ports", "claim_listener_ports"]


def _listeners(settings: Settings, workers: int) -> list[tuple[str, str, int]]:
    """(setting, host, port) of each listener of this node with `workers` workers."""
    server = settings.server
    ports = [("COFRE_SERVER__PORT", server.host, server.port)]
    if server.health_port is not None:
        ports.append(("COFRE_SERVER__HEALTH_PORT", server.health_host, server.health_port))
    if settings.capture.port is not None:
        ports.append(("COFRE_CAPTURE__PORT", settings.capture.host, settings.capture.port))
    if server.metrics_port is not None:
        ports += [
            (
                f"COFRE_SERVER__METRICS_PORT + {n} (worker {n}'s metrics)",
                server.metrics_host,
                server.metrics_port + n,
            )
            for n in range(workers)
        ]
    return ports


def check_listener_ports(settings: Settings, workers: int) -> None:
    """Raise `ConfigurationError` naming the settings when two of the node's listeners
    (with `workers` metrics listeners) would share a port. By port alone, whatever the
    hosts, as `api.lifecycle.claim_port` judges: "0.0.0.0", "localhost" and "127.1" are
    spellings of addresses that share one."""
    seen: dict[int, str] = {}
    clashes: list[str] = []
    for name, _, port in _listeners(settings, workers):
        if port > 65535:
            clashes.append(f"{name} is {port}, past the last TCP port")
        elif port in seen:
            clashes.append(f"{name} and {seen[port]} are both {port}")
        else:
            seen[port] = name
    if clashes:
        raise ConfigurationError(
            "two listeners of this node would share a port (the kernel would split their "
            "connections): " + "; ".join(clashes)
        )


def claim_listener_ports(settings: Settings, workers: int) -> contextlib.ExitStack:
    """Hold the claim (`api.lifecycle.claim_port`) of every port this node listens on,
    not only the mTLS one: another node of the same user with its health or capture
    port on one of these (both SO_REUSEPORT) would start, and the kernel would split
    that port's connections between the two nodes. Close the stack to let them go.
    Raises `ApiError` naming the port another `cofre serve` holds."""
    claims = contextlib.ExitStack()
    try:
        for _, host, port in _listeners(settings, workers):
            claims.enter_context(contextlib.closing(claim_port(host, port)))
    except BaseException:
        claims.close()
        raise
    return claims
