"""Session 36: a policy whose text the audit log would record otherwise than written is
refused, wherever the run is (a comment, an upstream URL, any field).

The `policy.load`/`policy.reload` entry records the policy's whole text as its document
and the SHA-256 of the text as read. The log masks card-like digits (12 or more in a
row, `cofre.redaction.mask_pan_like`) in all it records, the document included, so a
comment naming a merchant number (``# acquirer MID 123456789012``) was recorded masked:
the text no longer matched its hash and the offline verifier's check 6 failed every
bundle covering that policy, for as long as it was in force. Session 35 refused such
identities; the rest of the text went through. The loader now refuses the whole text,
naming the line and column and showing the line as the log would record it, never the
run in clear (the message reaches the terminal and the log)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from audit.log import MAX_DOCUMENT, canonical_payload
from cofre.redaction import mask_pan_like
from policies import loader
from policies.errors import PolicyInvalid
from policies.loader import parse_policy
from vault.policy_record import policy_event

SERVICE = '[identities."spiffe://cofre/payments"]\noperations = ["lookup"]\n'
ROUTE = (
    '[identities."spiffe://cofre/payments"]\noperations = ["relay"]\n\n'
    "[relay_routes.pay]\nupstream = {upstream}\n"
    'identities = ["spiffe://cofre/payments"]\n'
)
RUN = "123456789012"


def _refusal(text: str, kind: str = "toml") -> str:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(text, kind=kind, source="policy.toml")
    message = str(refused.value)
    assert RUN not in message
    assert "4111111111111111" not in message
    assert mask_pan_like(message) == message, message
    return message


def test_a_comment_with_a_merchant_number_is_refused_by_line_and_column() -> None:
    message = _refusal(SERVICE + f"# acquirer MID {RUN}, reviewed 2026-12-05\n")
    assert "line 3, column 16" in message, message
    assert "12******9012" in message, message  # the line as the log would record it
    assert "check 6" in message or "SHA-256" in message, message


def test_an_upstream_url_with_a_merchant_number_is_refused() -> None:
    url = f'"https://acq.example/merchants/{RUN}/pay"'
    message = _refusal(ROUTE.format(upstream=url))
    assert "line 5, column 43" in message, message


@pytest.mark.parametrize(
    "line",
    [
        "# test card 4111 1111 1111 1111",  # grouped
        "# test card 4111111111111111",  # a card's length
        "# ticket 1234567890123456789012345",  # longer than any card
        "# test card 4111-1111-1111-1111",  # hyphenated
    ],
    ids=["grouped", "card", "long-run", "hyphenated"],
)
def test_other_runs_the_log_masks_are_refused(line: str) -> None:
    message = _refusal(SERVICE + line + "\n")
    assert "line 3, column " in message, message


def test_a_yaml_policy_is_refused_alike() -> None:
    text = f'identities:\n  "spiffe://cofre/payments":\n    operations: [lookup]  # MID {RUN}\n'
    assert "line 3, column 33" in _refusal(text, kind="yaml")


def test_a_text_the_log_would_escape_is_refused() -> None:
    with pytest.raises(PolicyInvalid, match="UTF-8"):
        parse_policy(SERVICE + "# \udc80\n", kind="toml")


def test_a_text_the_log_would_not_record_whole_is_refused() -> None:
    """Over the audit document bound the entry could not be written at all: refused by
    the loader with a message, not by the audit writer at load or reload."""
    assert loader.MAX_POLICY_TEXT == MAX_DOCUMENT
    padding = "# " + "x" * 78 + "\n"
    text = SERVICE + padding * (MAX_DOCUMENT // len(padding) + 1)
    with pytest.raises(PolicyInvalid, match="at most 65,536 characters"):
        parse_policy(text, kind="toml")


@pytest.mark.parametrize(
    "extra",
    [
        "# MID 12345678901 (eleven digits)\n",
        "# reviewed 2026-12-05, change 2026-12-05T10:11:12Z\n",
        "# uuid 123e4567-e89b-12d3-a456-42661417400a\n",
        "# sha256 0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9\n",
        "# host 192.168.100.200\n",
    ],
    ids=["eleven", "dates", "uuid", "digest", "ipv4"],
)
def test_what_the_log_records_as_written_loads_and_matches_its_hash(extra: str) -> None:
    """Whatever the loader accepts, the entry's document is the text exactly: the hash
    the entry records is of the document it carries (the verifier's check 6)."""
    loaded = parse_policy(SERVICE + extra, kind="toml")
    entry = policy_event("policy.load", actor="cofre", source="p.toml", text=loaded.text)
    payload = canonical_payload(entry, datetime.now(UTC))
    body = json.loads(payload)
    assert body["document"] == loaded.text
    assert body["details"]["sha256"] == hashlib.sha256(body["document"].encode()).hexdigest()


def test_a_list_of_six_lengths_is_refused_with_the_range_form_to_use() -> None:
    """The log takes six or more short numbers in one list for a card's groups: the
    natural `pan_lengths` of a format for every card from 14 digits up was recorded
    masked. Refused, and the message says how to write it."""
    text = (
        '[formats.long]\ntype = "random"\npan_lengths = [14, 15, 16, 17, 18, 19]\n\n'
        '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\n'
        'formats = ["long"]\n'
    )
    message = _refusal(text)
    assert "line 3, column " in message, message
    assert 'pan_lengths = "14-19"' in message, message


@pytest.mark.parametrize(
    ("written", "lengths"),
    [('"14-19"', tuple(range(14, 20))), ('"16-16"', (16,)), ("[16, 19]", (16, 19))],
)
def test_pan_lengths_may_be_written_as_a_range(written: str, lengths: tuple[int, ...]) -> None:
    text = (
        f'[formats.long]\ntype = "random"\npan_lengths = {written}\n\n'
        '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\n'
        'formats = ["long"]\n'
    )
    loaded = parse_policy(text, kind="toml")
    assert loaded.policy.formats["long"].pan_lengths == lengths


@pytest.mark.parametrize("written", ['"19-14"', '"11-19"', '"14-20"', '"14..19"', '"x"'])
def test_a_range_out_of_bounds_or_malformed_is_refused(written: str) -> None:
    text = f'[formats.long]\ntype = "random"\npan_lengths = {written}\n'
    with pytest.raises(PolicyInvalid, match="pan_lengths"):
        parse_policy(text, kind="toml")
