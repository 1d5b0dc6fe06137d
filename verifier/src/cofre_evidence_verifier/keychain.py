"""The audit key's chain: handover checkpoints, and which key signs which tree heads.

IN PCI SCOPE (as evidence). The vault's audit signing key is rotated under dual control
(PCI DSS 3.6.1.2, 3.7.4). Rotation ends with a *handover checkpoint*: the log's current
head as a c2sp.org/tlog-checkpoint note with one extension line ::

    cofre-audit/<log id>
    <tree size N>
    <base64 root>
    cofre-key-handover <old vkey> <new vkey>

signed by BOTH keys (two signature lines, one per key ID; c2sp.org/signed-note lets a
note carry several). The old key's signature says "my successor is this key, from size
N on"; the new key's says its holder accepts the log as it stood at N. Heads up to size
N are signed by the old key, every head after N by the new one.

A verifier starts from the key it pinned out of band. With no handover that key signs
every head. With handovers, they must form one chain (each starts from the key the one
before introduced, at a growing size, each signed by both of its keys, each to a key the
chain never had before) and the pinned key must be one of the chain's keys: pinning the
old key, the chain leads to the new one; pinning the new key, the handover signed by it
vouches for the old one (only as far as the witnesses that cosigned the handover are
Cofre witnesses: see `cofre_evidence_verifier.witnesses`). A head
signed by a key the chain did not introduce for its size fails, naming the head, and a
handover signed by only one of its keys is no handover at all (an operator holding the
HSM PIN who makes a key and signs with it has no signature by the old key to show).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Final

from cryptography.hazmat.primitives import serialization

from cofre_evidence_verifier.errors import NoteError
from cofre_evidence_verifier.note import (
    Checkpoint,
    NoteSignature,
    VerifierKey,
    parse_checkpoint,
    parse_note,
)

HANDOVER_EXTENSION: Final = "cofre-key-handover"
# A log rotates its audit key every year or so; a longer chain is refused (bounds work).
MAX_HANDOVERS: Final = 64


def spki_der(public_key_pem: bytes) -> bytes:
    """Return the SubjectPublicKeyInfo DER of a PEM public key. Raises `NoteError`."""
    try:
        public = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError):
        raise NoteError("the pinned audit key is not a PEM public key") from None
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_pem(key: VerifierKey) -> bytes:
    """Return the PEM public key of the ECDSA verifier key `key`."""
    return serialization.load_der_public_key(key.public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def handover_text(checkpoint: Checkpoint, old: VerifierKey, new: VerifierKey) -> str:
    """Return the note text of the handover from `old` to `new` at `checkpoint`'s size
    (the checkpoint's own extension lines are replaced by the handover line)."""
    line = f"{HANDOVER_EXTENSION} {old.encode()} {new.encode()}"
    return Checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root, (line,)).text()


def handover_note(
    text: str, old: VerifierKey, old_signature: bytes, new: VerifierKey, new_signature: bytes
) -> str:
    """Return the signed handover note: `text` (from `handover_text`), a blank line, the
    old key's signature line, then the new key's."""
    lines = (
        NoteSignature(old.name, old.key_id, old_signature).line()
        + NoteSignature(new.name, new.key_id, new_signature).line()
    )
    return text + "\n" + lines


@dataclass(frozen=True, slots=True)
class Handover:
    """A verified handover: at `checkpoint.size` the log's key went from `old` to `new`."""

    checkpoint: Checkpoint
    old: VerifierKey
    new: VerifierKey
    note: str

    @property
    def size(self) -> int:
        return self.checkpoint.size


def _signed_by(text: str, signatures: Sequence[NoteSignature], key: VerifierKey) -> bool:
    for signature in signatures:
        if key.matches(signature):
            try:
                key.verify(text, signature.signature)
            except NoteError:
                return False
            return True
    return False


def parse_handover(note: str) -> Handover:
    """Return the handover in the signed note `note` after checking it is signed by both
    the old and the new key it names. Raises `NoteError` naming what is wrong (not a
    handover, a key that does not belong to the log, a missing or bad signature)."""
    text, signatures = parse_note(note)
    checkpoint = parse_checkpoint(text)
    lines = [x for x in checkpoint.extensions if x.startswith(HANDOVER_EXTENSION + " ")]
    if len(lines) != 1 or len(checkpoint.extensions) != 1:
        raise NoteError(
            f"checkpoint at size {checkpoint.size} is not a key handover (one "
            f"'{HANDOVER_EXTENSION} <old vkey> <new vkey>' extension line)"
        )
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise NoteError(f"the handover at size {checkpoint.size} does not name two keys")
    old, new = VerifierKey.parse(parts[1]), VerifierKey.parse(parts[2])
    for key in (old, new):
        if key.name != checkpoint.origin:
            raise NoteError(
                f"the handover at size {checkpoint.size} names key {key.name}, "
                f"not a key of log {checkpoint.origin}"
            )
    if old.public == new.public:
        raise NoteError(f"the handover at size {checkpoint.size} hands a key over to itself")
    missing = [
        role for role, key in (("old", old), ("new", new)) if not _signed_by(text, signatures, key)
    ]
    if missing:
        raise NoteError(
            f"the key handover at size {checkpoint.size} is not signed by the "
            + " and the ".join(missing)
            + " key: a handover needs valid signatures by both keys (forged handover)"
        )
    return Handover(checkpoint, old, new, note)


@dataclass(frozen=True)
class KeyChain:
    """The audit keys of one log in order, with the tree sizes each one signs."""

    keys: tuple[bytes, ...]  # SPKI DER, oldest first
    handovers: tuple[Handover, ...]

    @classmethod
    def build(cls, pinned: Sequence[bytes], notes: Sequence[str]) -> KeyChain:
        """Return the chain from the handover `notes` (in any order) anchored at one of
        the `pinned` keys (PEM). Raises `NoteError` when a handover does not verify, the
        handovers do not link up, or no pinned key is on the chain."""
        if len(notes) > MAX_HANDOVERS:
            raise NoteError(f"more than {MAX_HANDOVERS} key handovers")
        anchors = [spki_der(pem) for pem in pinned]
        if not anchors:
            raise NoteError("no audit public key pinned")
        handovers = sorted((parse_handover(n) for n in notes), key=lambda h: h.size)
        if not handovers:
            return cls((anchors[0],), ())
        keys = [handovers[0].old.public]
        for before, after in pairwise(handovers):
            if after.size <= before.size:
                raise NoteError(f"two key handovers at size {after.size}")
            if after.old.public != before.new.public:
                raise NoteError(
                    f"the key handover at size {after.size} does not start from the key "
                    f"introduced at size {before.size} (a broken key chain)"
                )
        for handover in handovers:
            # Review 36: a rotation always introduces a fresh key. A handover to a key the
            # chain had before (the same pair handing over twice, or back to a retired
            # key) would let that key sign again for heads after it was retired.
            if handover.new.public in keys:
                raise NoteError(
                    f"the key handover at size {handover.size} hands over to a key the chain "
                    f"had before (key ID {handover.new.key_id:08x}): a retired key revived"
                )
            keys.append(handover.new.public)
        if not any(anchor in keys for anchor in anchors):
            raise NoteError(
                "none of the pinned audit keys is on the log's key chain (key IDs "
                + ", ".join(f"{h.old.key_id:08x}->{h.new.key_id:08x}" for h in handovers)
                + "): the handovers lead from another key"
            )
        return cls(tuple(keys), tuple(handovers))

    @property
    def latest(self) -> bytes:
        """The key in force now (SPKI DER): it signs heads after the last handover."""
        return self.keys[-1]

    def latest_pem(self) -> bytes:
        return serialization.load_der_public_key(self.latest).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @cached_property
    def _pems(self) -> tuple[bytes, ...]:
        # Once per chain: `pem_for` is asked for every signed head, and converting every
        # key of a chain of MAX_HANDOVERS for each of a hostile bundle's two million
        # heads took most of an hour (review 35).
        return tuple(
            serialization.load_der_public_key(k).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for k in self.keys
        )

    def pems(self) -> list[bytes]:
        """Every key of the chain as PEM, oldest first."""
        return list(self._pems)

    def index_for(self, size: int) -> int:
        """The position in `keys` of the key that signs heads of `size`: the old key up
        to and including a handover's size, the new key after it."""
        for position, handover in enumerate(self.handovers):
            if size <= handover.size:
                return position
        return len(self.handovers)

    def pem_for(self, size: int) -> bytes:
        """The PEM public key that must have signed the head of tree size `size`."""
        return self._pems[self.index_for(size)]

    def describe(self, size: int) -> str:
        """Name the key in force at `size` for an error message."""
        position = self.index_for(size)
        if not self.handovers:
            return "the pinned audit key"
        if position == 0:
            return f"the audit key before the handover at size {self.handovers[0].size}"
        since = self.handovers[position - 1].size
        return f"the audit key introduced by the handover at size {since}"
