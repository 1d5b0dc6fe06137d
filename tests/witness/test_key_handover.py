"""The witness (its own process) follows the log's audit key rotation: a handover
checkpoint signed by both the pinned key and the new one, consistent with what it
cosigned, introduces the new key when the witness's operator pinned that key first
(`cofre witness trust-key`); then only the new key's checkpoints are accepted. A key
the log never handed over to, a handover only the new key signed, or a handover to a
key the operator did not pin (an HSM PIN holder's own key) is refused."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from audit.note import (
    Checkpoint,
    CosignerKey,
    NoteSignature,
    handover_note,
    handover_text,
    parse_checkpoint,
    parse_note,
)
from audit.note import add_checkpoint_body as format_request
from tests.support.vectors import c2sp_notes
from tests.support.witness_process import WitnessProcess

W: dict[str, Any] = c2sp_notes()["witness"]
OLD = CosignerKey.parse(W["log_skey"])  # the log's key the witness pins ("monkeys")
ORIGIN = "monkeys"


def _init_and_next() -> tuple[Checkpoint, Checkpoint]:
    return parse_checkpoint(parse_note(W["init"])[0]), parse_checkpoint(parse_note(W["next"])[0])


def _signed_by(key: CosignerKey, checkpoint: Checkpoint) -> str:
    text = checkpoint.text()
    return text + "\n" + key.sign_note(text).line()


def _handover(old: CosignerKey, new: CosignerKey, at: Checkpoint, *, forge: bool = False) -> str:
    text = handover_text(at, old.note_verifier_key(), new.note_verifier_key())
    old_signature = (new if forge else old).sign_note(text).signature
    return handover_note(
        text,
        old.note_verifier_key(),
        old_signature,
        new.note_verifier_key(),
        new.sign_note(text).signature,
    )


def test_the_witness_follows_a_handover_and_only_a_genuine_one(tmp_path: Path) -> None:
    init, after = _init_and_next()
    proof = [base64.b64decode(h) for h in W["consistency_5_8"]]
    new, rogue = CosignerKey.generate(ORIGIN), CosignerKey.generate(ORIGIN)
    process = WitnessProcess(tmp_path, [W["log_vkey"]], skey=W["witness_skey"])
    process.start()
    try:
        assert process.post(format_request(0, [], W["init"])).status_code == 200
        # An operator's own key, never handed over to: refused.
        unknown = process.post(format_request(5, proof, _signed_by(new, after)))
        assert unknown.status_code == 403, unknown.text
        # A forged handover: the "old" line signed by the new key; or only the new line.
        forged = _handover(OLD, rogue, init, forge=True)
        assert process.post(format_request(5, [], forged)).status_code == 403
        text, signatures = parse_note(_handover(OLD, rogue, init))
        only_new = text + "\n" + signatures[1].line()
        assert process.post(format_request(5, [], only_new)).status_code == 403
        # A handover the pinned key signed but with a bad new-key signature: refused.
        bad_new = (
            text
            + "\n"
            + signatures[0].line()
            + NoteSignature(
                signatures[1].name, signatures[1].key_id, OLD.sign_note(text).signature
            ).line()
        )
        assert process.post(format_request(5, [], bad_new)).status_code == 403

        # The genuine handover, before the witness's operator pinned the new key: refused.
        genuine = _handover(OLD, new, init)
        unpinned = process.post(format_request(5, [], genuine))
        assert unpinned.status_code == 403, unpinned.text
        assert "not pinned by the witness operator" in unpinned.text
        # The operator pins the new key (received out of band); a handover, signed by
        # the real key, to another key is still refused.
        assert "pinned" in process.trust_key(new.note_verifier_key().encode())
        rogue_handover = process.post(format_request(5, [], _handover(OLD, rogue, init)))
        assert rogue_handover.status_code == 403, rogue_handover.text

        # The genuine handover at the cosigned size 5: cosigned and recorded.
        accepted = process.post(format_request(5, [], genuine))
        assert accepted.status_code == 200, accepted.text
        served = process.get(f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint")
        assert "cofre-key-handover" in served.text

        # The old key signs nothing more; the new key's next checkpoint is cosigned.
        assert process.post(format_request(5, proof, _signed_by(OLD, after))).status_code == 403
        assert process.post(format_request(5, proof, _signed_by(new, after))).status_code == 200
    finally:
        process.stop()
    # The handover is durable: a restarted witness still trusts only the new key.
    process = WitnessProcess(tmp_path, [W["log_vkey"]], skey=W["witness_skey"])
    process.start()
    try:
        assert process.post(format_request(8, [], _signed_by(OLD, after))).status_code == 403
        assert process.post(format_request(8, [], _signed_by(new, after))).status_code == 200
    finally:
        process.stop()


def test_a_pin_holders_handover_to_their_own_key_is_refused(tmp_path: Path) -> None:
    """The security review's attack: whoever holds the HSM PIN signs a handover with
    the log's real current key (C_Sign through the HSM) and with a software key of
    their own. Both signatures are valid, but the witness's operator never pinned that
    key: refused, and the witness goes on cosigning the real key's heads."""
    init, after = _init_and_next()
    proof = [base64.b64decode(h) for h in W["consistency_5_8"]]
    rogue = CosignerKey.generate(ORIGIN)
    process = WitnessProcess(tmp_path, [W["log_vkey"]], skey=W["witness_skey"])
    process.start()
    try:
        assert process.post(format_request(0, [], W["init"])).status_code == 200
        forged = process.post(format_request(5, [], _handover(OLD, rogue, init)))
        assert forged.status_code == 403, forged.text
        assert "not pinned by the witness operator" in forged.text
        assert rogue.note_verifier_key().encode() in forged.text
        # The rogue key signs nothing the witness accepts; the real key's heads go on.
        assert process.post(format_request(5, proof, _signed_by(rogue, after))).status_code == 403
        kept = process.post(format_request(5, proof, _signed_by(OLD, after)))
        assert kept.status_code == 200, kept.text
        metrics = process.get("/metrics").text
        assert 'outcome="witness_handover_not_pinned"} 1' in metrics
    finally:
        process.stop()
    assert "REFUSED KEY HANDOVER" in process.logged()
