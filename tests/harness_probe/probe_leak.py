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


def test_keeps_a_softhsm_token_whose_serial_looks_like_a_card(tmp_path: Path) -> None:
    # SoftHSM2 writes the token's serial (16 hex digits, sometimes all decimal) into
    # token.object: noise to the Luhn rule. A known test PAN in a key file still counts.
    token = tmp_path / "tokens" / "5bac96ca-5ba3-cbd3-36ba-488528668753"
    token.mkdir(parents=True)
    body = "36" + "8" * 13
    (token / "token.object").write_bytes(b"\x00\x10" + (body + luhn_check_digit(body)).encode())
    (token / "key.object").write_bytes(b"\x00\x10" + b"5555555555554444" + b"\x00")
