"""Cryptoperiods (PCI DSS 3.6.1.1, 3.7.4): each key in use is ok, expiring or overdue by
the configured period of its kind, on a clock the test sets (never the wall clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from cofre.settings import KeySettings
from vault.cryptoperiod import CryptoperiodMonitor, Cryptoperiods, PeriodState, judge
from vault.errors import KeyCryptoperiodOverdue
from vault.service import VaultService


def _monitor(
    engine: Engine, service: VaultService, at: timedelta, *, fail: bool = False
) -> CryptoperiodMonitor:
    start = datetime.now(UTC)
    return CryptoperiodMonitor(
        engine,
        service.keyring,
        Cryptoperiods(),
        fail_readiness=fail,
        clock=lambda: start + at,
    )


def test_judge_places_a_key_in_its_period() -> None:
    periods = Cryptoperiods(kek_days=365, warn_days=30)
    born = datetime(2026, 1, 1, tzinfo=UTC)
    states = [
        judge("cofre-kek-v1", "kek", born, periods, born + timedelta(days=d)).state
        for d in (0, 334, 335, 364, 365, 900)
    ]
    assert states == [
        PeriodState.OK,
        PeriodState.OK,
        PeriodState.EXPIRING,
        PeriodState.EXPIRING,
        PeriodState.OVERDUE,
        PeriodState.OVERDUE,
    ]
    # The fingerprint and audit keys have their own (longer) defaults.
    assert Cryptoperiods().for_kind("fp") == timedelta(days=730)
    assert Cryptoperiods().for_kind("audit") == timedelta(days=730)
    assert Cryptoperiods().for_kind("data") == timedelta(days=365)


def test_defaults_come_from_settings() -> None:
    keys = KeySettings()
    assert (keys.cryptoperiod_kek_days, keys.cryptoperiod_data_days) == (365, 365)
    assert (keys.cryptoperiod_fingerprint_days, keys.cryptoperiod_audit_days) == (730, 730)
    assert keys.cryptoperiod_warn_days == 30
    assert keys.overdue_fails_readiness is False


def test_keys_in_use_age_into_expiring_then_overdue(service: VaultService, engine: Engine) -> None:
    service.keyring.registry.adopt_if_empty()
    fresh = _monitor(engine, service, timedelta(0))
    assessed = {p.key: p.state for p in fresh.assess()}
    # Every kind in use is watched: the three token keys and both data keys.
    assert assessed == {
        "cofre-kek-v1": PeriodState.OK,
        "cofre-fp-v1": PeriodState.OK,
        "cofre-audit-v1": PeriodState.OK,
        "pan_gcm-v1": PeriodState.OK,
        "ff1-v1": PeriodState.OK,
    }
    assert fresh.check() == "ok"

    later = _monitor(engine, service, timedelta(days=350))
    check = later.check()
    assert check.startswith("key_cryptoperiod_expiring: ")
    assert "cofre-kek-v1" in check
    assert "cofre-fp-v1" not in check
    assert later.counts()[PeriodState.EXPIRING] == 3  # KEK and both data keys

    overdue = _monitor(engine, service, timedelta(days=400))
    check = overdue.check()  # reported, readiness still passes by default
    assert "key_cryptoperiod_overdue: " in check
    assert "cofre-kek-v1" in check
    assert overdue.counts() == {
        PeriodState.OK: 2,
        PeriodState.EXPIRING: 0,
        PeriodState.OVERDUE: 3,
    }

    strict = _monitor(engine, service, timedelta(days=400), fail=True)
    with pytest.raises(KeyCryptoperiodOverdue, match="cofre-kek-v1"):
        strict.check()
