"""`cofre serve`'s production check of the database connection: a PostgreSQL server
reached over the network must be verified against a pinned CA (review 35).

IN PCI SCOPE (wiring).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, make_url

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
# libpq's settings that weaken a verified connection without touching `sslmode` or
# `sslrootcert` (session 36), with the environment variable libpq reads each from
# (psycopg's wheel bundles libpq 18: `psycopg.pq.Conninfo.get_defaults()` lists them;
# `sslkeylogfile` has none). libpq takes a setting from the URL, else from the entry of
# the named service, else from its variable (`conninfo_add_defaults`).
_WEAKENING: Final = {
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "sslkeylogfile": None,
}
# Under TLS 1.2 (libpq's own minimum by default).
_OLD_TLS: Final = frozenset({"tlsv1", "tlsv1.1"})
_C_SPACE: Final = " \t\n\v\f\r"


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
    if parsed.query.get("sslmode") != "verify-full" or not pinned:
        return (
            f"the database URL does not verify {', '.join(remote)}: add "
            "sslmode=verify-full&sslrootcert=<the database CA's file> to it"
        )
    # The URL's sslmode and sslrootcert win over the environment's and a service's
    # (libpq's order), so neither can weaken them; what the URL leaves out they fill in.
    return _weakened(parsed, service)


def _weakened(parsed: URL, service: str) -> str | None:
    """What libpq would take from outside the URL (or from the URL itself) that weakens
    a verified connection: TLS under 1.2, GSSAPI encryption in place of the pinned TLS,
    a key log file of the session's secrets. None if nothing does."""
    entry: dict[str, str] = {}
    if service:
        found = _service_entry(service)
        if found is None:
            return (
                f"the database service {service} is in no service file the check can read "
                "(PGSERVICEFILE, ~/.pg_service.conf, PGSYSCONFDIR/pg_service.conf), so what "
                "it sets cannot be judged: name its file in PGSERVICEFILE"
            )
        entry = found
    problems: list[str] = []
    for key, variable in _WEAKENING.items():
        if key in parsed.query:
            value, where = str(parsed.query[key]), "the URL"
        elif key in entry:
            value, where = entry[key], f"the service {service}"
        elif variable is not None and variable in os.environ:
            value, where = os.environ[variable], variable
        else:
            continue
        if key == "sslkeylogfile" and value:
            problems.append(f"{where} sets sslkeylogfile (the session's TLS secrets to a file)")
        elif key == "gssencmode" and value not in ("", "disable"):
            problems.append(f"{where} sets gssencmode={value} (GSSAPI in place of the pinned TLS)")
        elif key.startswith("ssl_") and value.lower() in _OLD_TLS:
            problems.append(f"{where} sets {key}={value} (TLS under 1.2)")
    if not problems:
        return None
    return (
        "the database connection would be weakened: "
        + "; ".join(problems)
        + " (remove it, or override it in the URL)"
    )


def _service_entry(service: str) -> dict[str, str] | None:
    """The settings of `service` in the first service file libpq would find it in: the
    file ``PGSERVICEFILE`` names (else ``~/.pg_service.conf``), then
    ``PGSYSCONFDIR/pg_service.conf``. None when none of those holds it (libpq may still
    find it in the system directory it was built with, which the check cannot know)."""
    user = os.environ.get("PGSERVICEFILE") or str(Path("~/.pg_service.conf").expanduser())
    files = [Path(user)]
    if system := os.environ.get("PGSYSCONFDIR"):
        files.append(Path(system) / "pg_service.conf")
    for path in files:
        try:
            # Lines as libpq's fgets reads them: split at a newline only.
            lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            continue
        entry = _section(lines, service)
        if entry is not None:
            return entry
    return None


def _section(lines: list[str], service: str) -> dict[str, str] | None:
    """The settings of `service`'s section in a service file's `lines`, read as libpq's
    ``parseServiceFile`` reads them, or None when the file has no such section. Its
    header is a line starting ``[`` + the name + ``]``, whatever follows (``[vault] #
    production``), and the section ends at the next line starting ``[``: a later
    section of the same name is not read. (Session 36 review: a header was taken only
    exact and same-named sections merged, so ``[vault] # production`` was no section to
    the check, which went on to PGSYSCONFDIR's clean entry while libpq connected with
    this one.) Spaces around ``=`` are taken out here, where libpq refuses the line."""
    header = f"[{service}]"
    entry: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip(_C_SPACE)  # C's isspace, as libpq trims; not Unicode's
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if entry is not None:
                break
            if line.startswith(header):
                entry = {}
        elif entry is not None and "=" in line:
            key, _, value = line.partition("=")
            # libpq sets only what is not set yet: a key's first value wins.
            entry.setdefault(key.strip(), value.strip())
    return entry
