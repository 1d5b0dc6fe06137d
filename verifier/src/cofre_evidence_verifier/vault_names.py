"""Which vault an officer's signed request was for: check 6c compares each counted
proposal's and approval's signed ``@authority`` with the vault's own names.

The vault accepts an officer's request only when the ``Host`` it was signed for names
the vault itself: a name in its TLS certificate's subjectAltName (``vault/officer_mfa.py``).
Without the same comparison offline, a ceremony run on a staging vault where the same
officers' keys are registered, its entries copied into production's log by an operator
who can write entries, would prove production's rotation (review 27).

The names come from one of two places:

- the names the auditor pins (``cofre-verify --authority NAME``, repeatable): the trust
  anchor. ``NAME`` is a host (DNS name or IP address), optionally with ``:port``; a
  pinned name without a port matches any port;
- otherwise ``keys/officer_authorities.json``, the names the vault took as its own when
  the bundle was exported (``names``), each on one of its ``ports`` when the file lists
  them (a bundle without them: any port). The exporter writes that file, and an operator holding the
  HSM PIN can re-sign a bundle that lists a staging name too: without a pin the check
  catches a ceremony copied from another vault, not an operator who also edits the
  bundle. The report names the source and the names compared with, and each ceremony's
  ``signed_for``, so the auditor sees them.

A bundle with neither (exported before the file existed) proves no ceremony: the
auditor pins the vault's names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cofre_evidence_verifier.bundle import OFFICER_AUTHORITIES, Files, load_json

# As `request_signature._AUTHORITY` (the vault's own expression), plus an IPv6 address
# without its brackets, which an auditor may well type.
_NAME: Final = re.compile(
    r"(?P<host>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORT: Final = "443"
_MAX_PORT: Final = 65535
PINNED: Final = "pinned by the auditor (--authority)"
RECORDED: Final = (
    f"as the bundle records them ({OFFICER_AUTHORITIES}, written by the exporter: pin "
    "them with --authority)"
)

Name = tuple[str, str | None]  # host (IP addresses canonical, no brackets), port or None


def parse_name(text: str) -> Name:
    """`text` (``host`` or ``host:port``; an IPv6 address bare or in brackets) as
    compared: the host lower-case and, for an IP address, canonical. Raises
    `ValueError` when it is not one."""
    lowered = text.strip().lower()
    try:
        return str(ipaddress.IPv6Address(lowered)), None
    except ValueError:
        pass
    parsed = _NAME.fullmatch(lowered)
    if parsed is None:
        raise ValueError(f"{text!r} is not a host or host:port")
    host, port = parsed["host"], parsed["port"]
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ValueError(f"{text!r} is not a host or host:port") from None
    else:
        with contextlib.suppress(ValueError):  # else a DNS name
            host = str(ipaddress.ip_address(host))
    if port is not None and not 1 <= int(port) <= _MAX_PORT:
        raise ValueError(f"{text!r} has no valid port")
    # As a number, as the vault compares it (`vault.httpsig.authority_port`): a Host of
    # "vault.example:08443" was accepted on port 8443.
    return host, None if port is None else str(int(port))


def _shown(name: Name) -> str:
    host, port = name
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class VaultNames:
    """The names each signed ``@authority`` is compared with (None: no names at all)
    and where they come from."""

    names: frozenset[Name] | None
    source: str
    recorded: list[str] | None  # the bundle's names, as it states them

    def summary(self) -> dict[str, Any]:
        shown = None if self.names is None else sorted(_shown(n) for n in self.names)
        return {"compared_with": shown, "source": self.source, "recorded": self.recorded}

    def problem(self, authority: str) -> str | None:
        """Why `authority` (a signed ``@authority``, normalised: no port when 443) is
        not one of the vault's names, or None when it is."""
        if self.names is None:
            return (
                f"it was signed for {authority}, and the bundle records no names of the "
                f"vault ({OFFICER_AUTHORITIES}) and the auditor pinned none: pin the "
                "vault's name with --authority"
            )
        try:
            host, port = parse_name(authority)
        except ValueError as exc:  # a port of 0 or past 65535 (review 28b V2)
            return f"it was signed for {authority}, which names no vault: {exc}"
        port = port or _DEFAULT_PORT
        for own_host, own_port in self.names:
            if own_host == host and own_port in {None, port}:
                return None
        names = ", ".join(sorted(_shown(n) for n in self.names)) or "none"
        return f"it was signed for {authority}, not this vault ({names}, {self.source})"


def vault_names(files: Files, pinned: Sequence[str] | None, problems: list[str]) -> VaultNames:
    """The names to compare with: `pinned` when given, else the bundle's record; a
    malformed record or pin is added to `problems` (and compares with no name)."""
    recorded = _recorded(files, problems)
    if pinned:
        try:
            names = frozenset(parse_name(name) for name in pinned)
        except ValueError as exc:
            problems.append(f"--authority: {exc}")
            names = frozenset()
        return VaultNames(names, PINNED, recorded)
    if recorded is None:
        return VaultNames(None, "none", None)
    try:
        # A wildcard no vault matches (`vault.officer_mfa.names_host`); exporters before
        # review 28b V1 recorded one beside the certificate's other names.
        parsed = [parse_name(n) for n in recorded if not n.startswith("*.")]
        ports = _recorded_ports(files)
        if ports is not None:
            parsed = [(host, str(p)) for host, _ in parsed for p in ports]
        return VaultNames(frozenset(parsed), RECORDED, recorded)
    except ValueError as exc:
        problems.append(f"{OFFICER_AUTHORITIES}: {exc}")
        return VaultNames(frozenset(), RECORDED, recorded)


def _recorded_ports(files: Files) -> list[int] | None:
    """The ``ports`` of ``keys/officer_authorities.json`` (already read by `_recorded`),
    None when it lists none. Raises `ValueError` when they are not ports."""
    document = load_json(files[OFFICER_AUTHORITIES])
    ports = document.get("ports")
    if ports is None:
        return None
    if not isinstance(ports, list) or not all(
        type(p) is int and 1 <= p <= _MAX_PORT for p in ports
    ):
        raise ValueError("its ports are not a list of TCP ports")
    return [int(p) for p in ports]


def _recorded(files: Files, problems: list[str]) -> list[str] | None:
    """The names ``keys/officer_authorities.json`` lists, None when there is no such
    file (or it is not one: reported)."""
    raw = files.get(OFFICER_AUTHORITIES)
    if raw is None:
        return None
    try:
        document = load_json(raw)
    except ValueError as exc:
        problems.append(f"{OFFICER_AUTHORITIES}: not JSON ({exc})")
        return None
    names = document.get("names") if isinstance(document, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"{OFFICER_AUTHORITIES}: no list of names")
        return None
    return [str(n) for n in names]
