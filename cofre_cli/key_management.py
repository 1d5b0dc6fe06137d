"""Wiring the key management of a running vault: rotation, cryptoperiods, the officers'
second factor and key custody.

IN PCI SCOPE (wiring). Split from `cofre_cli.wiring` so each stays a readable size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from cofre.settings import Settings
from hsm.provider import HSMProvider
from vault.cryptoperiod import CryptoperiodMonitor, monitor_from_settings
from vault.custody import Custody
from vault.officer_mfa import OfficerMfa
from vault.rotation import KeyRotation
from vault.service import VaultService


@dataclass(frozen=True)
class KeyManagement:
    rotation: KeyRotation
    periods: CryptoperiodMonitor
    officer_mfa: OfficerMfa
    custody: Custody


def key_management(
    settings: Settings, engine: Engine, provider: HSMProvider, service: VaultService
) -> KeyManagement:
    """Key rotation (listing the keys' cryptoperiods in its inventories), the monitor of
    those cryptoperiods, the officers' MFA verifier and key custody, all reading the
    policy in force from `service`."""
    periods = monitor_from_settings(settings.keys, engine, service.keyring)
    rotation = KeyRotation(
        engine,
        provider,
        service.keyring,
        lambda: service.policy,
        proposal_ttl=timedelta(hours=settings.keys.proposal_ttl_hours),
        destroy_grace=timedelta(seconds=settings.keys.destroy_grace_seconds),
        # Fresh: an officer reads what is in use now (readiness reads the cached one).
        cryptoperiods=lambda: [p.as_json() for p in periods.assess(fresh=True)],
    )
    return KeyManagement(
        rotation=rotation,
        periods=periods,
        officer_mfa=OfficerMfa(engine, lambda: service.policy),
        custody=Custody(engine, service.keyring.registry, lambda: service.policy),
    )
