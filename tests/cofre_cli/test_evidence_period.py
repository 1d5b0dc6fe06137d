"""`cofre evidence export --from/--to`: the help promises "ISO date or time, UTC", and
the vault refuses a period without a time zone (422), so the command sends one."""

from __future__ import annotations

import pytest

from cofre.errors import ConfigurationError
from cofre_cli.commands.evidence import _utc


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("2026-11-01", "2026-11-01T00:00:00+00:00"),
        ("2026-11-01T06:30:00", "2026-11-01T06:30:00+00:00"),
        ("2026-11-01T06:30:00Z", "2026-11-01T06:30:00+00:00"),
        ("2026-11-01T06:30:00-03:00", "2026-11-01T06:30:00-03:00"),
    ],
)
def test_a_date_or_time_without_a_zone_is_sent_as_utc(given: str, sent: str) -> None:
    assert _utc(given, "--to") == sent


@pytest.mark.parametrize("given", ["yesterday", "2026-13-01", ""])
def test_what_is_not_an_iso_date_is_refused_before_any_request(given: str) -> None:
    with pytest.raises(ConfigurationError, match="--from"):
        _utc(given, "--from")
