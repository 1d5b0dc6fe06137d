"""Session 36 review: a `pan_lengths` list the audit log would mask is refused with the
range form to write, however the list is laid out.

Six or more PAN lengths in one list read as a card's groups to the log, so the loader
refuses the policy (`policies.loader._recorded_as_written`) and says to write the range.
The hint looked only at the line holding the masked run: a list written over several
lines (``pan_lengths = [`` then the numbers on the next line, as a formatter lays out a
long array) got "Remove the number, or split it", which names nothing the operator
wrote; and a YAML policy was told the TOML form (``pan_lengths = "14-19"``). An existing
policy refused at upgrade must say what to write instead."""

from __future__ import annotations

import pytest

from policies.errors import PolicyInvalid
from policies.loader import parse_policy

_TOML_ID = '[identities."spiffe://cofre/payments"]\noperations = ["tokenize"]\nformats = ["long"]\n'
_YAML_ID = (
    'identities:\n  "spiffe://cofre/payments":\n    operations: [tokenize]\n    formats: [long]\n'
)


def _refusal(text: str, kind: str) -> str:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(text, kind=kind, source="policy")
    return str(refused.value)


@pytest.mark.parametrize(
    ("written", "range_"),
    [
        ("pan_lengths = [\n  14, 15, 16, 17, 18, 19,\n]\n", "14-19"),
        ("pan_lengths = [  # every long card\n  14, 15, 16, 17, 18, 19\n]\n", "14-19"),
        ("pan_lengths = [\n  14, 15, 16,\n  17, 18, 19, 12, 13,\n]\n", "12-19"),
    ],
    ids=["next-line", "comment-on-head", "second-line"],
)
def test_a_toml_list_over_several_lines_gets_the_range(written: str, range_: str) -> None:
    text = f'[formats.long]\ntype = "random"\n{written}\n{_TOML_ID}'
    message = _refusal(text, "toml")
    assert f'pan_lengths = "{range_}"' in message, message


def test_a_yaml_policy_is_told_the_yaml_form() -> None:
    text = (
        "formats:\n  long:\n    type: random\n    pan_lengths: [14, 15, 16, 17, 18, 19]\n"
        + _YAML_ID
    )
    message = _refusal(text, "yaml")
    assert 'pan_lengths: "14-19"' in message, message


def test_a_yaml_flow_list_over_several_lines_gets_the_range() -> None:
    text = (
        "formats:\n  long:\n    type: random\n    pan_lengths: [\n      14, 15, 16, 17, 18, 19]\n"
        + _YAML_ID
    )
    message = _refusal(text, "yaml")
    assert 'pan_lengths: "14-19"' in message, message


def test_the_range_it_names_loads() -> None:
    text = f'[formats.long]\ntype = "random"\npan_lengths = "14-19"\n\n{_TOML_ID}'
    assert parse_policy(text, kind="toml").policy.formats["long"].pan_lengths == tuple(
        range(14, 20)
    )


@pytest.mark.parametrize(
    "written",
    [
        "pan_lengths = [16, 19]  # acquirer MID 123456789012\n",
        "pan_lengths = [16, 19]\n\n# acquirer MID 123456789012\n",
        "pan_lengths = [\n  16, 19,\n  # acquirer MID 123456789012\n]\n",
    ],
    ids=["same-line", "after-a-blank", "inside-the-list"],
)
def test_a_number_in_a_comment_near_pan_lengths_gets_no_lengths_hint(written: str) -> None:
    """The run is the comment's, not the lengths': the hint told the operator to split
    a format whose two lengths were never the problem."""
    text = f'[formats.long]\ntype = "random"\n{written}\n{_TOML_ID}'
    message = _refusal(text, "toml")
    assert "12******9012" in message, message
    assert "PAN lengths" not in message, message
