"""The audit key chain (`cofre_evidence_verifier.keychain`): a handover checkpoint signed
by both keys introduces the new audit key; anything less is refused by name."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.keychain import (
    KeyChain,
    handover_note,
    handover_text,
    parse_handover,
    spki_der,
)
from cofre_evidence_verifier.note import Checkpoint, ecdsa_verifier_key

ORIGIN = "cofre-audit/test-log"


class _Key:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.vkey = ecdsa_verifier_key(ORIGIN, self.pem)

    def sign(self, text: str) -> bytes:
        return self.private.sign(text.encode(), ec.ECDSA(hashes.SHA256()))


def _checkpoint(size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, hashlib.sha256(str(size).encode()).digest())


def _handover(old: _Key, new: _Key, size: int) -> str:
    text = handover_text(_checkpoint(size), old.vkey, new.vkey)
    return handover_note(text, old.vkey, old.sign(text), new.vkey, new.sign(text))


def test_handover_signed_by_both_keys_introduces_the_new_key() -> None:
    old, new = _Key(), _Key()
    note = _handover(old, new, 8)
    handover = parse_handover(note)
    assert (handover.size, handover.old, handover.new) == (8, old.vkey, new.vkey)
    assert note.splitlines()[3].startswith("cofre-key-handover ")
    chain = KeyChain.build([old.pem], [note])
    assert chain.pem_for(1) == old.pem
    assert chain.pem_for(8) == old.pem  # the handover's own size: still the old key
    assert chain.pem_for(9) == new.pem
    assert chain.latest == spki_der(new.pem)


def test_auditor_may_pin_the_new_key_instead() -> None:
    old, new = _Key(), _Key()
    chain = KeyChain.build([new.pem], [_handover(old, new, 8)])
    assert chain.pem_for(3) == old.pem
    assert chain.pem_for(20) == new.pem


def test_two_rotations_chain_and_order_does_not_matter() -> None:
    one, two, three = _Key(), _Key(), _Key()
    notes = [_handover(two, three, 30), _handover(one, two, 10)]
    chain = KeyChain.build([one.pem], notes)
    assert [chain.pem_for(s) for s in (5, 10, 11, 30, 31)] == [
        one.pem,
        one.pem,
        two.pem,
        two.pem,
        three.pem,
    ]


def test_forged_handover_signed_only_by_the_new_key_is_refused() -> None:
    """An operator with the HSM PIN makes a key and 'hands over' to it: without the old
    key's signature, no verifier follows it."""
    old, rogue = _Key(), _Key()
    text = handover_text(_checkpoint(8), old.vkey, rogue.vkey)
    # Sign the old key's line with the rogue key: wrong signature, same key ID.
    forged = handover_note(text, old.vkey, rogue.sign(text), rogue.vkey, rogue.sign(text))
    with pytest.raises(NoteError, match="not signed by the old key"):
        KeyChain.build([old.pem], [forged])
    only_new = text + "\n" + forged.split("\n\n", 1)[1].split("\n", 1)[1]
    with pytest.raises(NoteError, match=r"not signed by the old key.*forged handover"):
        parse_handover(only_new)


def test_handover_from_a_key_nobody_pinned_is_refused() -> None:
    pinned, rogue_old, rogue_new = _Key(), _Key(), _Key()
    with pytest.raises(NoteError, match="none of the pinned audit keys"):
        KeyChain.build([pinned.pem], [_handover(rogue_old, rogue_new, 8)])


def test_broken_chain_is_refused() -> None:
    one, two, three, four = _Key(), _Key(), _Key(), _Key()
    with pytest.raises(NoteError, match="does not start from the key introduced"):
        KeyChain.build([one.pem], [_handover(one, two, 10), _handover(three, four, 20)])


def test_plain_checkpoint_and_altered_handover_are_not_handovers() -> None:
    old, new = _Key(), _Key()
    text = _checkpoint(8).text()
    plain = handover_note(text, old.vkey, old.sign(text), new.vkey, new.sign(text))
    with pytest.raises(NoteError, match="not a key handover"):
        parse_handover(plain)
    note = _handover(old, new, 8)
    altered = note.replace("\n8\n", "\n9\n", 1)
    with pytest.raises(NoteError, match="not signed by the old and the new key"):
        parse_handover(altered)


def test_without_handovers_the_pinned_key_signs_everything() -> None:
    key = _Key()
    chain = KeyChain.build([key.pem], [])
    assert chain.pem_for(1) == chain.pem_for(10**6) == key.pem
    assert chain.describe(5) == "the pinned audit key"


def test_a_chain_back_to_a_key_it_had_is_refused() -> None:
    """Review 36: K1->K2, K2->K1, K1->K2 links up, but it revives the retired K1 (and
    hands K1 over to K2 twice): a rotation always introduces a fresh key."""
    one, two = _Key(), _Key()
    notes = [_handover(one, two, 10), _handover(two, one, 20), _handover(one, two, 30)]
    with pytest.raises(NoteError, match="hands over to a key the chain had before"):
        KeyChain.build([two.pem], notes)
    with pytest.raises(NoteError, match="at size 20 hands over to a key the chain had"):
        KeyChain.build([one.pem], notes[:2])
