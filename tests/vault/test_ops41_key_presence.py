"""`vault.key_presence.KeyPresenceCheck`'s grace (session 41): a registered key missing
from the token is named only once it has been absent longer than the key availability
timeout (a new key on CloudHSM reaches the cluster's HSMs one after another), one
WARNING line when that starts and one INFO line when it ends, not one per probe. The
token and registry side runs for real in tests/api/test_ops41_missing_key_readiness.py;
here the clock is the test's."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from vault.key_presence import KeyPresenceCheck


class _Seen(KeyPresenceCheck):
    """The check with what `missing_keys` found set by the test."""

    def __init__(self, clock: list[float]) -> None:
        none: Any = None
        super().__init__(none, none, none, grace=5.0, clock=lambda: clock[0])
        self.labels: list[str] = []

    def _missing(self) -> list[str]:
        return list(self.labels)


def test_a_missing_key_is_named_past_the_grace_and_logged_once() -> None:
    clock = [100.0]
    check = _Seen(clock)
    with capture_logs() as logs:
        assert check.check() == "ok"
        check.labels = ["cofre-fp-v2"]
        assert check.check() == "ok"  # seen now: within the grace
        clock[0] += 5.0
        assert check.check() == "ok"  # at the grace, not past it
        clock[0] += 0.5
        named = check.check()
        assert named.startswith("hsm_key_missing: cofre-fp-v2 ("), named
        assert check.check() == named  # the next probes: the same, no new line
        check.labels = []
        assert check.check() == "ok"
        check.labels = ["cofre-fp-v2"]
        assert check.check() == "ok"  # back and gone again: its grace starts again
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "registered keys missing from the token"),
        ("info", "registered keys on the token again"),
    ]
    assert logs[0]["missing"] == ["cofre-fp-v2"]
