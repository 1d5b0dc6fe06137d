"""Wiring the key management of a running vault: rotation, cryptoperiods, the officers'
second factor and key custody.

IN PCI SCOPE (wiring). Split from `cofre_cli.wiring` so each stays a readable size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from cofre.settings import Settings
from hsm.provider import HSMProvider
from vault.cryptoperiod import CryptoperiodMonitor, monitor_from_settings
from vault.custody import Custody
from vault.officer_mfa import OfficerMfa, officer_ports, server_names
from vault.rotation import KeyRotation
from vault.service import VaultService


@dataclass(frozen=True)
class KeyManagement:
    rotation: KeyRotation
    periods: CryptoperiodMonitor
    officer_mfa: OfficerMfa
    custody: Custody


def own_authorities(cert_file: Path | None) -> Callable[[], frozenset[str]]:
    """The names of the vault's own TLS certificate (`server_names`), which officers sign
    requests for: read again when the file changes (a renewal, put in force by SIGHUP).
    No certificate configured, or one that cannot be read: no name, so every officer
    signature is refused (``mfa_invalid``), never accepted for any authority."""
    # Keyed on the file's bytes, not its mtime and size: a renewal that keeps both (a
    # copy that preserves times, two writes in one clock tick, a certificate of the same
    # length) must not keep a dropped name. A few KiB read per officer request.
    cache: dict[bytes, frozenset[str]] = {}

    def names() -> frozenset[str]:
        if cert_file is None:
            return frozenset()
        try:
            pem = cert_file.read_bytes()
            if pem not in cache:
                cache.clear()
                cache[pem] = server_names(pem)
            return cache[pem]
        except (OSError, ValueError):
            return frozenset()

    return names


def key_management(
    settings: Settings, engine: Engine, provider: HSMProvider, service: VaultService
) -> KeyManagement:
    """Key rotation (listing the keys' cryptoperiods in its inventories), the monitor of
    those cryptoperiods, the officers' MFA verifier and key custody, all reading the
    policy in force from `service`."""
    periods = monitor_from_settings(settings.keys, engine, service.keyring)
    # The vault's own names: officers sign for them, and each counted ceremony action's
    # stored signature must name one (`vault.approval_proof`).
    authorities = own_authorities(settings.server.cert_file)
    rotation = KeyRotation(
        engine,
        provider,
        service.keyring,
        lambda: service.policy,
        proposal_ttl=timedelta(hours=settings.keys.proposal_ttl_hours),
        destroy_grace=timedelta(seconds=settings.keys.destroy_grace_seconds),
        # Fresh: an officer reads what is in use now (readiness reads the cached one).
        cryptoperiods=lambda: [p.as_json() for p in periods.assess(fresh=True)],
        authorities=authorities,
    )
    return KeyManagement(
        rotation=rotation,
        periods=periods,
        officer_mfa=OfficerMfa(
            engine,
            lambda: service.policy,
            authorities=authorities,
            ports=officer_ports(settings.server.port, settings.server.officer_ports),
        ),
        custody=Custody(engine, service.keyring.registry, lambda: service.policy),
    )
