"""Session 42: the capture listener's allowance of refusal entries from all addresses
(200 at once, then 20 a second, per worker) was a constant, `api.capture.
LISTENER_REFUSALS`; session 41 made the mTLS API's allowances settings. It is now
``COFRE_CAPTURE__LISTENER_REFUSAL_ENTRIES_BURST`` / ``_PER_SECOND`` (defaults unchanged),
validated with an error that names the variable: at least one entry (a flood's first
refusals keep their own entries) and at most a bound that keeps what anyone on the
internet can add to the audit log bounded whatever is set. The allowance reaching a
real listener is `tests/api/test_refusal_attacks.py`'s review-28 tests."""

from __future__ import annotations

import pytest

from api.capture import LISTENER_REFUSALS
from cofre.errors import ConfigurationError
from cofre.settings import load_settings

BURST = "COFRE_CAPTURE__LISTENER_REFUSAL_ENTRIES_BURST"
RATE = "COFRE_CAPTURE__LISTENER_REFUSAL_ENTRIES_PER_SECOND"


def test_the_defaults_are_the_listeners_allowance_as_it_was() -> None:
    capture = load_settings().capture
    assert capture.listener_refusal_entries_burst == LISTENER_REFUSALS.burst == 200
    assert capture.listener_refusal_entries_per_second == LISTENER_REFUSALS.per_second == 20


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BURST, "25")
    monkeypatch.setenv(RATE, "0.5")
    capture = load_settings().capture
    assert (
        capture.listener_refusal_entries_burst,
        capture.listener_refusal_entries_per_second,
    ) == (
        25,
        0.5,
    )


@pytest.mark.parametrize("value", ["0", "-5", "10001", "1000000000"])
def test_a_burst_outside_its_bounds_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(BURST, value)
    with pytest.raises(ConfigurationError, match=f"{BURST} is {value}: it must be from 1 to"):
        load_settings()


@pytest.mark.parametrize("value", ["0", "-1", "0.00001", "100.5", "1e9", "inf", "nan"])
def test_a_rate_outside_its_bounds_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(RATE, value)
    with pytest.raises(ConfigurationError, match=f"{RATE} is .*: it must be from one a day"):
        load_settings()


def test_the_bounds_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BURST, "10000")
    monkeypatch.setenv(RATE, "100")
    capture = load_settings().capture
    assert (
        capture.listener_refusal_entries_burst,
        capture.listener_refusal_entries_per_second,
    ) == (
        10_000,
        100,
    )
    monkeypatch.setenv(BURST, "1")
    monkeypatch.setenv(RATE, str(1 / 86_400))
    capture = load_settings().capture
    assert capture.listener_refusal_entries_burst == 1
    assert capture.listener_refusal_entries_per_second == 1 / 86_400
