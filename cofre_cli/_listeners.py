"""The node's listening ports, checked against each other before anything binds.

IN PCI SCOPE (wiring). A worker binds the mTLS, health and capture ports with
SO_REUSEPORT (`api.lifecycle.bind_reuse_port`), so two of this node's listeners set to
one port do not fail with "address in use": the kernel takes both and splits the
connections between them. With `COFRE_SERVER__HEALTH_PORT` equal to
`COFRE_SERVER__PORT`, some clients' TLS handshakes reached the plain-HTTP health
listener and some kubelet probes the TLS one (session 33). Worker N's metrics listener
is on `COFRE_SERVER__METRICS_PORT` + N, a range that can cover another listener's port
only once the worker count is known, hence here rather than in the settings.

Two listeners on one port number do not meet when their hosts are two different IP
addresses, neither a wildcard: the kernel hands a connection to the socket bound to its
destination address (a health listener on 10.0.0.5:9000 and metrics on 127.0.0.1:9000,
session 34; by port alone until then). A wildcard covers every address, and a host name
("localhost") or an address's other spelling ("127.1", which `ipaddress` does not read)
may be the other's address: those still clash, as does an IPv6 address with a zone
("fe80::1%eth0" and "fe80::1%2" may be one; review 34b).
"""

from __future__ import annotations

import contextlib
import ipaddress

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


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The one address `host` names, or None when it may name more (a wildcard) or any
    (a host name, a spelling `ipaddress` does not read, such as "127.1", or an IPv6 zone:
    "%eth0" and "%2" may be one interface, which `ipaddress` compares as text)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return None if address.is_unspecified else address


def _apart(host: str, other: str) -> bool:
    """Whether listeners on `host` and `other` never share a connection on one port."""
    first, second = _address(host), _address(other)
    return first is not None and second is not None and first != second


def check_listener_ports(settings: Settings, workers: int) -> None:
    """Raise `ConfigurationError` naming the settings when two of the node's listeners
    (with `workers` metrics listeners) would share a port: the same port number on hosts
    that are not two different IP addresses, neither a wildcard (`_apart`)."""
    seen: dict[int, list[tuple[str, str]]] = {}
    clashes: list[str] = []
    for name, host, port in _listeners(settings, workers):
        if port > 65535:
            clashes.append(f"{name} is {port}, past the last TCP port")
            continue
        clashes += [
            f"{name} and {other} are both {port}"
            for other, other_host in seen.get(port, [])
            if not _apart(host, other_host)
        ]
        seen.setdefault(port, []).append((name, host))
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
    Each port once: this node's listeners on two addresses of one port
    (`check_listener_ports`) share its claim, which stays by port number alone against
    other nodes. Raises `ApiError` naming the port another `cofre serve` holds."""
    claims = contextlib.ExitStack()
    claimed: set[int] = set()
    try:
        for _, host, port in _listeners(settings, workers):
            if port not in claimed:
                claims.enter_context(contextlib.closing(claim_port(host, port)))
                claimed.add(port)
    except BaseException:
        claims.close()
        raise
    return claims
