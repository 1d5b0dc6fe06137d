"""`cofre serve`'s production check of the database connection: a PostgreSQL server
reached over the network must be verified against a pinned CA (review 35).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


def unverified_database(url: str) -> str | None:
    """Why the PostgreSQL URL `url` leaves the server it reaches over the network
    unverified, or None. Review 35: only RDS IAM authentication required
    ``sslmode=verify-full``; psycopg's default (``prefer``) checks no certificate and
    falls back to clear text, so anyone in the path read and changed the store and the
    audit log. ``verify-full`` without ``sslrootcert`` (or with ``system``) trusts the
    CA file ``PGSSLROOTCERT`` or OpenSSL's ``SSL_CERT_FILE`` names, not a pinned one.
    Loopback and a Unix socket are no network path. No allowance: a vault whose
    database answers for anyone in the path is not one to serve, even for a demo."""
    if not url.startswith("postgresql"):
        return None
    parsed = make_url(url)
    query = {key: str(parsed.query.get(key, "")) for key in ("host", "hostaddr", "service")}
    # Review 35b: libpq takes each of these the URL leaves out from the environment
    # (the same process's), and a service's from pg_service.conf, which is not read
    # here: a URL with no host was served as a Unix socket's while PGHOST, PGHOSTADDR
    # or a service sent it over the network unverified.
    host = f"{parsed.host or ''},{query['host']}".strip(",") or os.environ.get("PGHOST", "")
    hostaddr = query["hostaddr"] or os.environ.get("PGHOSTADDR", "")
    service = query["service"] or os.environ.get("PGSERVICE", "")
    hosts = {h.strip("[]") for value in (host, hostaddr) for h in value.split(",")}
    remote = sorted(h for h in hosts if h not in _LOCAL_HOSTS and not h.startswith("/"))
    if service:
        remote.append(f"the service {service}")  # judged as a network path, unread
    if not remote:
        return None
    pinned = str(parsed.query.get("sslrootcert", "")) not in {"", "system"}
    if parsed.query.get("sslmode") == "verify-full" and pinned:
        return None
    return (
        f"the database URL does not verify {', '.join(remote)}: add "
        "sslmode=verify-full&sslrootcert=<the database CA's file> to it"
    )
