"""Session 41: the allowances of refusal entries (``COFRE_AUDIT__REFUSAL_ENTRIES_*``,
``COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_*``) are validated with an error that names the
variable: none (a flood's first refusals keep their own entries) and a bound the audit
log's growth under one certificate's refusals stays within, whatever is set
(`cofre._settings_audit.MAX_REFUSAL_ENTRIES_*`). The allowances reaching a real app are
in tests/api/test_settings41_refusal_allowances.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cofre.errors import ConfigurationError
from cofre.settings import load_settings

BURSTS = ["COFRE_AUDIT__REFUSAL_ENTRIES_BURST", "COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_BURST"]
RATES = [
    "COFRE_AUDIT__REFUSAL_ENTRIES_PER_SECOND",
    "COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_PER_SECOND",
]


@pytest.mark.parametrize("variable", BURSTS)
@pytest.mark.parametrize("value", ["0", "-5", "10001", "1000000000"])
def test_a_burst_outside_its_bounds_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"{variable} is {value}: it must be from 1 to"):
        load_settings()


@pytest.mark.parametrize("variable", RATES)
@pytest.mark.parametrize("value", ["0", "-1", "0.00001", "10.5", "1e9", "inf", "nan"])
def test_a_rate_outside_its_bounds_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"{variable} is .*: it must be from one a day"):
        load_settings()


def test_the_bounds_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in BURSTS:
        monkeypatch.setenv(variable, "10000")
    for variable in RATES:
        monkeypatch.setenv(variable, "10")
    audit = load_settings().audit
    assert (audit.refusal_entries_burst, audit.named_refusal_entries_per_second) == (10_000, 10)
    for variable in [*BURSTS, *RATES]:
        monkeypatch.setenv(variable, "1" if variable in BURSTS else str(1 / 86_400))
    audit = load_settings().audit
    assert audit.named_refusal_entries_burst == 1
    assert audit.refusal_entries_per_second == 1 / 86_400


def test_the_settings_file_is_checked_as_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "cofre.toml"
    config.write_text("[audit]\nnamed_refusal_entries_burst = 20000\n")
    monkeypatch.setenv("COFRE_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match="COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_BURST"):
        load_settings()
    config.write_text("[audit]\nnamed_refusal_entries_burst = 2000\n")
    assert load_settings().audit.named_refusal_entries_burst == 2000
