"""Signed notes, checkpoints and cosignatures (the standalone verifier's parser, which
the vault and the witness use too) against the published examples (tests/vectors/c2sp/:
C2SP, golang.org/x/mod, transparency-dev)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.merkle import verify_consistency
from cofre_evidence_verifier.note import (
    ALG_COSIGNATURE_V1,
    CosignerKey,
    VerifierKey,
    cosignature_message,
    open_note,
    parse_checkpoint,
    parse_note,
    require_quorum,
)
from tests.support.vectors import c2sp_notes

VECTORS = c2sp_notes()


@pytest.mark.parametrize("case", VECTORS["ed25519_notes"], ids=lambda c: c["source"])
def test_ed25519_notes_verify(case: dict[str, Any]) -> None:
    keys = [VerifierKey.parse(v) for v in case["vkeys"]]
    text, verified = open_note(case["note"], keys)
    assert text == case["text"]
    assert [v.key.name for v in verified] == [k.name for k in keys]
    # Only one key known: the other signature is ignored, not an error.
    _, verified = open_note(case["note"], keys[:1])
    assert len(verified) == 1


def test_vkeys_round_trip_and_mangled_vkeys_are_refused() -> None:
    for case in VECTORS["ed25519_notes"]:
        for vkey in case["vkeys"]:
            assert VerifierKey.parse(vkey).encode() == vkey
    for vkey in VECTORS["bad_vkeys"]["vkeys"]:
        with pytest.raises(NoteError):
            VerifierKey.parse(vkey)
    good = VECTORS["ed25519_notes"][0]["vkeys"][0]
    for i in range(len(good)):
        mangled = good[:i] + chr(ord(good[i]) + 1) + good[i + 1 :]
        with pytest.raises(NoteError):
            VerifierKey.parse(mangled)


def test_signer_key_from_golang_matches_its_vkey() -> None:
    case = VECTORS["ed25519_notes"][0]
    key = CosignerKey.parse(case["skey"])
    assert key.note_verifier_key().encode() == case["vkeys"][0]
    assert "AYEK" not in repr(key)
    # Ed25519 is deterministic: signing the vector's text gives the vector's line.
    assert key.sign_note(case["text"]).line() == case["note"].splitlines(True)[3]


@pytest.mark.parametrize("case", VECTORS["ecdsa_checkpoints"], ids=lambda c: c["origin"])
def test_ecdsa_checkpoints_of_real_logs_verify(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["vkey"])
    text, _ = open_note(case["note"], [key])
    checkpoint = parse_checkpoint(text)
    assert (checkpoint.origin, checkpoint.size) == (case["origin"], case["size"])
    forged = case["note"].replace(str(case["size"]), str(case["size"] + 1), 1)
    with pytest.raises(NoteError, match="does not verify"):
        open_note(forged, [key])


def test_unknown_keys_only_is_refused() -> None:
    case = VECTORS["ecdsa_checkpoints"][0]
    other = VerifierKey.parse(VECTORS["ecdsa_checkpoints"][1]["vkey"])
    with pytest.raises(NoteError, match="no signature on the note is by a known key"):
        open_note(case["note"], [other])


def test_witness_vectors_checkpoints_and_their_consistency_proof() -> None:
    w = VECTORS["witness"]
    log = VerifierKey.parse(w["log_vkey"])
    first = parse_checkpoint(open_note(w["init"], [log])[0])
    second = parse_checkpoint(open_note(w["next"], [log])[0])
    proof = [base64.b64decode(h) for h in w["consistency_5_8"]]
    verify_consistency(first.size, second.size, proof, first.root, second.root)
    witness = CosignerKey.parse(w["witness_skey"])
    assert witness.note_verifier_key().encode() == w["witness_vkey_ed25519"]
    assert witness.verifier_key().algorithm == ALG_COSIGNATURE_V1


def test_cosignature_message_is_the_specs_example() -> None:
    m = VECTORS["cosignature_message"]
    assert cosignature_message(m["timestamp"], m["checkpoint"]).decode() == m["message"]


def test_cosignature_round_trip_and_tampering() -> None:
    w = VECTORS["witness"]
    witness = CosignerKey.parse(w["witness_skey"])
    text, signatures = parse_note(w["next"])
    cosigned = text + "\n" + "".join(s.line() for s in signatures)
    cosigned += witness.cosign(text, 1679315147).line()
    log = VerifierKey.parse(w["log_vkey"])
    _, verified = open_note(cosigned, [log, witness.verifier_key()])
    assert [v.timestamp for v in verified] == [None, 1679315147]
    # A cosignature over another checkpoint, moved onto this one, fails by name.
    other = witness.cosign(parse_note(w["init"])[0], 1679315147)
    with pytest.raises(NoteError, match="signature by witness does not verify"):
        open_note(text + "\n" + other.line(), [witness.verifier_key()])


@pytest.mark.parametrize(
    "text",
    [
        "origin\n12\n",
        "\n12\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=\n",
        "o\n012\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=\n",
        "o\n-1\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=\n",
        "o\n1\nYmFuYW5hcw==\n",
        "o\n1\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=",
        "o\n1\nV8K9aklZ4EPB+RMOk1/8VsJUdFZR77GDtZUQq84vSbo=\n\n",
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    "note",
    [
        "text\n— k AAAAAAA=\n",
        "text\n\n— k\n",
        "text\n\n- k AAAAAAA=\n",
        "text\n\n— k AAAA\n",
        "te\x01xt\n\n— k AAAAAAA=\n",
        "text\n\n— k AAAAAAA=",
        "text\n\n" + "— k AAAAAAA=\n" * 101,
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        parse_note(note)


def test_a_bogus_cosignature_line_first_does_not_hide_the_valid_one() -> None:
    """The verifier review: only a witness's first line was tried, so a line under its
    name and ID put first (a copy from another checkpoint, a 4-byte ID collision) made
    a genuinely witnessed note fail. Every line is tried; none forged passes."""
    w = VECTORS["witness"]
    witness = CosignerKey.parse(w["witness_skey"])
    text = parse_note(w["next"])[0]
    moved = witness.cosign(parse_note(w["init"])[0], 1679315147)
    genuine = witness.cosign(text, 1679315148)
    valid = require_quorum(text, [moved, genuine], [witness.verifier_key()], 1)
    assert [v.timestamp for v in valid] == [1679315148]
    with pytest.raises(NoteError, match="does not verify"):
        require_quorum(text, [moved, moved], [witness.verifier_key()], 1)
