"""What the mTLS listener may hold of its worker's file descriptors (session 37).

IN PCI SCOPE. Each connection, and each TLS handshake under way, is a descriptor of the
worker process, which its database pool, its HSM session and (when configured) the
capture listener share. Until session 37 the mTLS listener bounded neither its
handshakes under way nor its connections in all, only an identity's connections (2,000
by default), above the soft limit of open files a container runtime usually leaves
(1,024): anyone reaching the port with no certificate (connections that never send a
``ClientHello``, each held to the handshake deadline), or one stolen certificate (idle
connections within its cap), took every descriptor of the worker, and every other
identity's connections waited at accept.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["MtlsBounds", "health_bounds", "mtls_bounds", "soft_open_files"]


def soft_open_files() -> int:
    """This process's soft limit of open files (``ulimit -n``), a large number for
    none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class MtlsBounds:
    """The mTLS listener's bounds per worker: its connections in all
    (`max_connections`), one identity's (`per_identity`), and its TLS handshakes under
    way, in all and per client address (`handshakes`)."""

    max_connections: int
    per_identity: int
    handshakes: tuple[int, int]


def mtls_bounds(max_connections_per_identity: int, open_files: int | None = None) -> MtlsBounds:
    """The bounds for a worker whose soft limit of open files is `open_files` (None:
    this process's): at most half of them in mTLS connections (the other half for the
    database pool, the HSM, the log and the capture listener's own bound), one identity
    at most half of those and never more than `max_connections_per_identity` (so one
    certificate cannot keep the others out), and handshakes under way at most a quarter
    of the connections (16 at least), a client address a quarter of those (at least 4:
    a load balancer that terminates TCP is one address for every client)."""
    files = soft_open_files() if open_files is None else open_files
    total = max(2, files // 2)
    pending = max(16, total // 4)
    return MtlsBounds(
        max_connections=total,
        per_identity=max(1, min(max_connections_per_identity, total // 2)),
        handshakes=(pending, max(4, pending // 4)),
    )


def health_bounds(open_files: int | None = None) -> tuple[int, int]:
    """The plain-HTTP health listener's connections at once per worker, in all and per
    client address (IPv6 by its /64), for a soft limit of open files of `open_files`
    (None: this process's): a sixteenth of it (8 at least), an address a quarter of
    those (4 at least). Session 39: it capped none (review 34's choice, a cap being
    what idle connections had filled), and a flood of idle connections there, each
    held to the head deadline and opened again, took the worker's descriptors from the
    mTLS listener, the database pool and the HSM. The kubelet's probes need a few: the
    share per address keeps one flooding address from taking the probes' places."""
    files = soft_open_files() if open_files is None else open_files
    total = max(8, files // 16)
    return total, max(4, total // 4)
