"""Review 35c: a policy that does not parse is refused with a message masked as the log
would mask it. YAML's parse errors quote the offending line (a snippet with a caret):
review 35 masked the validation messages where they are made, but not these, so an
identity's 12-digit run or a card pasted into the file reached `PolicyInvalid` in clear
(the terminal and the log mask it again; a caller of `parse_policy` need not)."""

from __future__ import annotations

import pytest

from cofre.redaction import mask_pan_like
from policies.errors import PolicyInvalid
from policies.loader import parse_policy
from tests.support.pans import card_number

NUMBERED = "urn:corp:officer:000123456789"
CARD = card_number("411111", 35)


@pytest.mark.parametrize(
    "text",
    [
        # An unclosed flow mapping: the snippet quotes the identity's line.
        f'identities:\n  "{NUMBERED}": {{role: security_officer\n  other: 1\n',
        # A quoted value never closed: the snippet quotes the card pasted into it.
        f'identities: {{}}\nnote: "{CARD}\n',
    ],
    ids=["identity-in-flow-mapping", "card-in-open-quote"],  # no run in a test's name
)
def test_finding_a_yaml_parse_error_quotes_no_card_like_run(text: str) -> None:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(text, kind="yaml")
    message = str(refused.value)
    assert "not valid YAML" in message
    assert mask_pan_like(message) == message, mask_pan_like(message)
