"""An identity is a client certificate's SAN URI, an IA5String (RFC 5280 4.2.1.6): the
policy refuses one no certificate can carry (review qsa37: an identity with a Cyrillic o
(U+043E) stood beside the real officer's name it looked like, and only the verifier, which
now refuses to count it, told them apart)."""

from __future__ import annotations

import pytest

from policies.errors import PolicyInvalid
from policies.loader import parse_policy

_RULES = 'operations = ["tokenize"]\nformats = ["pan_fpe"]\n'


@pytest.mark.parametrize(
    "identity",
    [
        "spiffe://cofre/officer-b\\u043eb",  # Cyrillic o
        "spiffe://cofre/caf\\u00e9",
        "spiffe://cofre/two words",
        "spiffe://cofre/tab\\there",
        "spiffe://cofre/zero\\u200bwidth",
    ],
)
def test_an_identity_no_certificate_can_name_is_refused_escaped(identity: str) -> None:
    with pytest.raises(PolicyInvalid, match="SAN URI can") as refused:
        parse_policy(f'[identities."{identity}"]\n{_RULES}', kind="toml")
    assert str(refused.value).isascii()


def test_a_percent_encoded_identity_is_accepted() -> None:
    policy = parse_policy(f'[identities."spiffe://cofre/caf%C3%A9"]\n{_RULES}', kind="toml")
    assert "spiffe://cofre/caf%C3%A9" in policy.policy.identities
