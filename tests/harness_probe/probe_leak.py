"""Run only by tests/test_harness.py in a child pytest: each test leaks a card number
somewhere the session-end scan reads, and passes; the scan must fail the run anyway.
Not collected by the main suite (no test_ prefix)."""

from __future__ import annotations

import logging
from pathlib import Path

from vault.pan import luhn_check_digit


def test_writes_a_test_pan_into_a_log_file(tmp_path: Path) -> None:
    (tmp_path / "service.log").write_text("charge ok pan=4111111111111111\n")


def test_logs_a_generated_card_number(caplog: object) -> None:
    body = "52" + "7" * 13  # in no test source: only the Luhn rule can find it
    logging.getLogger("probe").warning("declined %s", body + luhn_check_digit(body))


def test_writes_nothing_sensitive(tmp_path: Path) -> None:
    (tmp_path / "service.log").write_text("charge ok token=tok_123\n")
