"""Review 38: one officer's token key never stands for two identities.

Dual control counts distinct *identities* (`vault.rotation`), and the second factor
proves the person holds the token registered for the identity (`vault.officer_mfa`). A
policy that registers one token key for two officer identities lets the one person who
holds that token (and the two certificates: a second identity kept "for emergencies", a
leftover one, a copy-and-paste of the key) propose and approve alone, each request
signed by the same hardware. The loader must refuse it, however the PEM is written."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.errors import PolicyInvalid
from policies.loader import parse_policy


def _officer(name: str, pem: str, role: str = "security_officer") -> str:
    operations = '["key_admin"]' if role == "security_officer" else '["evidence_export"]'
    return (
        f'[identities."spiffe://cofre/{name}"]\nrole = "{role}"\n'
        f'operations = {operations}\nmfa_public_key = """{pem}"""\n\n'
    )


def _pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_distinct_keys_load() -> None:
    parse_policy(_officer("officer-alice", _pem()) + _officer("officer-bob", _pem()), kind="toml")


@pytest.mark.parametrize("respell", [False, True], ids=["same-text", "respelled"])
def test_one_token_key_for_two_officers_is_refused(respell: bool) -> None:
    shared = _pem()
    # The same key written otherwise (CRLF line ends, blank line after the armour): the
    # same public point, so the same token.
    other = shared.replace("\n", "\r\n") + "\n" if respell else shared
    text = _officer("officer-alice", shared) + _officer("officer-alice-2", other)
    with pytest.raises(PolicyInvalid, match="mfa_public_key"):
        parse_policy(text, kind="toml")


def test_an_officer_and_an_auditor_sharing_a_token_key_are_refused() -> None:
    shared = _pem()
    text = _officer("officer-alice", shared) + _officer("auditor", shared, role="auditor")
    with pytest.raises(PolicyInvalid, match="mfa_public_key"):
        parse_policy(text, kind="toml")
