"""A card after a lone surrogate, in an audit entry and in the CLI's echo of a path.

Review of session 33: a lone surrogate (an undecodable byte of a file name, or a JSON
``\\ud800`` escape) was spelt as its escape (``\\ud800``) before the masking looked:
the escape's last hex digits then stood glued to the card's first group
(``\\ud800NNNN NNNNNN NNNNN``), that group was no longer the card's, and the card went
into the entry (the Merkle leaf: for good) and onto the CLI's output in clear. The text
is now masked as it came, then escaped, then masked again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from audit.log import AuditEvent, Outcome, canonical_payload
from cofre.redaction import luhn_valid
from cofre_cli.audit_trail import shown_path

AT = datetime(2026, 12, 5, tzinfo=UTC)
# Luhn-valid test cards, assembled so no source line holds one whole.
_CARDS = [
    "3782" + " 822463 " + "10005",
    "3782" + "-822463-" + "10005",
    "4111" + "1111 " + "1111" + "1111",
    "5555" + "5555 5555" + "4444",
]
# Surrogates whose escape ends in a decimal digit, so it glues to what follows.
_SURROGATES = ["\ud800", "\udcc3", "\udb19"]


def _cases() -> list[tuple[str, str]]:
    """(text, the card as written in it) for each card after each surrogate."""
    for card in _CARDS:
        assert luhn_valid("".join(c for c in card if c.isdigit()))
    return [(surrogate + card, card) for card in _CARDS for surrogate in _SURROGATES]


def _events(text: str) -> list[AuditEvent]:
    """An entry with `text` as its actor, a detail's value, a detail's key, its document."""
    return [
        AuditEvent(action="audit_read", outcome=Outcome.SUCCESS, actor=text),
        AuditEvent(action="x", outcome=Outcome.SUCCESS, actor="a", details={"out": text}),
        AuditEvent(action="x", outcome=Outcome.SUCCESS, actor="a", details={text: 1}),
        AuditEvent(action="x", outcome=Outcome.SUCCESS, actor="a", document=text),
    ]


def test_a_card_after_a_lone_surrogate_is_masked_in_every_field() -> None:
    # Counted, not quoted: a failure names the case, never the card.
    shown = [
        (number, field)
        for number, (text, card) in enumerate(_cases())
        for field, event in enumerate(_events(text))
        if card in canonical_payload(event, AT)
    ]
    assert shown == []


def test_a_card_after_a_lone_surrogate_is_masked_in_the_cli_s_echo_of_a_path() -> None:
    shown = [
        number
        for number, (text, card) in enumerate(_cases())
        if card in shown_path(Path("/srv/exports") / text)
    ]
    assert shown == []
