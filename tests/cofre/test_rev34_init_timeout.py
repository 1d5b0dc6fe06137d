"""``COFRE_HSM__INIT_TIMEOUT_SECONDS`` past what a wait can take.

Review of session 33: the setting was bounded below only. A worker waits for its first
key adoption, and a readiness check for a library load, with `threading.Event.wait` of
that many seconds, which raises `OverflowError` past the platform's time_t (1e10 s on
Linux): the worker died of a traceback at start whenever the adoption had not ended
at once, and `/readyz` answered with an exception instead of 503. Such a bound is
refused at load now, with the setting's name, as a zero is.
"""

from __future__ import annotations

import threading

import pytest

from cofre.errors import ConfigurationError
from cofre.settings import load_settings


def test_a_bound_no_wait_can_take_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OverflowError):
        threading.Event().wait(1e10)  # what the worker's wait did with it
    for refused in ("1e10", "1e300", "3601"):
        monkeypatch.setenv("COFRE_HSM__INIT_TIMEOUT_SECONDS", refused)
        with pytest.raises(ConfigurationError, match=r"hsm\.init_timeout_seconds"):
            load_settings()
    monkeypatch.setenv("COFRE_HSM__INIT_TIMEOUT_SECONDS", "3600")
    assert load_settings().hsm.init_timeout_seconds == 3600.0
