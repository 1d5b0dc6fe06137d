"""Review 35: a policy naming an identity the audit log would record masked is refused.

The log masks card-like digits (12 or more in a row, `cofre.redaction.mask_pan_like`)
in all it records, the actor included. An identity holding an employee number
(``urn:corp:officer:000123456789``) was recorded masked as the actor of every entry it
caused: PCI DSS 10.2.2 wants each entry to identify the user, two officers masked alike
look like one to the verifier's dual control checks, and the policy's own `policy.load`
entry, its text masked, no longer matched its SHA-256 (check 6 failed every bundle).
The loader now refuses such a policy, naming the identity by its position, never
echoing the run in clear (the error reaches the terminal and the log).
"""

from __future__ import annotations

import pytest

from cofre.redaction import mask_pan_like
from policies.errors import PolicyInvalid
from policies.loader import parse_policy

NUMBERED = "urn:corp:officer:000123456789"
RUN = "000123456789"
SERVICE = '[identities."spiffe://cofre/payments"]\noperations = ["lookup"]\n\n'


def _officer(identity: str, extra: str = "") -> str:
    return (
        f'[identities."{identity}"]\nrole = "security_officer"\n'
        f'operations = ["key_admin"]\n{extra}\n'
    )


def _refusal(text: str, kind: str = "toml") -> str:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(text, kind=kind)
    message = str(refused.value)
    assert RUN not in message
    assert mask_pan_like(message) == message, message
    return message


def test_an_identity_the_log_would_mask_is_refused_by_position() -> None:
    message = _refusal(SERVICE + _officer(NUMBERED))
    assert "identity 2 of 2" in message
    assert "12 digits or more" in message


@pytest.mark.parametrize(
    "identity",
    [
        "spiffe://corp/officer/4111111111111111",  # a whole card's length
        "https://corp.example/people/12345678901234567890123",  # longer than any card
        "urn:corp:officer:4111 1111 1111 1111",  # grouped
    ],
    ids=["card", "long-run", "grouped"],
)
def test_other_runs_the_log_masks_are_refused(identity: str) -> None:
    with pytest.raises(PolicyInvalid) as refused:
        parse_policy(_officer(identity) + SERVICE, kind="toml")
    message = str(refused.value)
    assert mask_pan_like(message) == message, message
    assert "identity 1 of 2" in message


def test_a_yaml_policy_is_refused_alike() -> None:
    text = f'identities:\n  "spiffe://cofre/payments":\n    operations: [lookup]\n  "{NUMBERED}":\n'
    text += "    role: security_officer\n    operations: [key_admin]\n"
    assert "identity 2 of 2" in _refusal(text, kind="yaml")


def test_refused_before_any_other_check_that_names_the_identity() -> None:
    """An identity with a run and another fault (an unknown format): the message names
    neither in clear (the other checks quote the identity)."""
    text = f'[identities."{NUMBERED}"]\noperations = ["tokenize"]\nformats = ["nope"]\n'
    assert "identity 1 of 1" in _refusal(text)


def test_field_errors_and_routes_never_echo_the_run() -> None:
    """pydantic's location of a field error is the identity's key; a relay route may name
    an identity the policy does not have: neither message shows the run in clear."""
    field = f'[identities."{NUMBERED}"]\nrole = "emperor"\n'
    _refusal(field)
    route = (
        '[identities."spiffe://cofre/payments"]\noperations = ["relay"]\n\n'
        '[relay_routes.pay]\nupstream = "https://acq.example/pay"\n'
        f'identities = ["spiffe://cofre/payments", "{NUMBERED}"]\n'
    )
    _refusal(route)


def test_identities_with_short_numbers_still_load() -> None:
    """Eleven digits in a row, a date, a UUID: the log leaves them, so does the loader."""
    loaded = parse_policy(
        _officer("urn:corp:officer:00012345678")
        + _officer("spiffe://corp/2026-12-05/officer")
        + _officer("urn:uuid:123e4567-e89b-12d3-a456-42661417400a")
        + SERVICE,
        kind="toml",
    )
    assert len(loaded.policy.identities) == 4
