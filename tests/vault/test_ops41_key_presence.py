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
        self.present = {"cofre-fp-v1", "cofre-kek-v1"}
        self.wrapping: set[str] = set()

    def _missing(self) -> tuple[list[str], set[str], set[str]]:
        return list(self.labels), set(self.present), set(self.wrapping)


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


def test_a_missing_key_with_no_earlier_version_on_the_token_says_nothing_serves() -> None:
    """Session 46's on-call drill: the only fingerprint key destroyed, every tokenize
    answered 503 `hsm_key_not_found`, and the check said "the version before serves"
    (there was none) in a WARNING. Now it says which kinds have nothing serving, and the
    line is an ERROR."""
    clock = [100.0]
    check = _Seen(clock)
    check.present = {"cofre-kek-v1", "cofre-audit-v1"}  # no fingerprint key at all
    with capture_logs() as logs:
        check.labels = ["cofre-fp-v1"]
        assert check.check() == "ok"
        clock[0] += 5.5
        named = check.check()
    assert "the version before serves" not in named, named
    assert "no earlier version of cofre-fp-v1 is on the token either" in named, named
    assert "hsm_key_not_found" in named, named
    assert [(e["log_level"], e["nothing_serves"]) for e in logs] == [("error", ["cofre-fp-v1"])]
    # With v1 there, v2 missing: the version before serves, as before.
    check.present = {"cofre-fp-v1"}
    check.labels = ["cofre-fp-v2"]
    clock[0] += 5.5
    check.check()
    clock[0] += 5.5
    assert "the version before serves" in check.check()


def test_a_missing_kek_that_wraps_data_keys_has_nothing_serving_in_its_stead() -> None:
    """Review 46b: data keys are unwrapped under the KEK label their row names, so an
    earlier KEK on the token never serves them: a missing KEK they are stored under is
    named as nothing serving, an ERROR, whatever earlier version is there."""
    clock = [100.0]
    check = _Seen(clock)
    check.present = {"cofre-kek-v1", "cofre-fp-v1"}
    check.wrapping = {"cofre-kek-v1", "cofre-kek-v2"}
    with capture_logs() as logs:
        check.labels = ["cofre-kek-v2"]
        check.check()
        clock[0] += 5.5
        named = check.check()
    assert "no earlier version of cofre-kek-v2" in named, named
    assert [(e["log_level"], e["nothing_serves"]) for e in logs] == [("error", ["cofre-kek-v2"])]


def test_the_error_is_logged_when_the_version_before_goes_too() -> None:
    """Review 46b: the newest missing while the one before serves is a WARNING; that
    one destroyed meanwhile (a completed ceremony) leaves the same label missing, and
    the ERROR must still be written when nothing serves any more."""
    clock = [100.0]
    check = _Seen(clock)
    check.present = {"cofre-fp-v1"}
    with capture_logs() as logs:
        check.labels = ["cofre-fp-v2"]
        check.check()
        clock[0] += 5.5
        assert "the version before serves" in check.check()
        check.present = set()
        assert "no earlier version of cofre-fp-v2" in check.check()
    assert [e["log_level"] for e in logs] == ["warning", "error"]
