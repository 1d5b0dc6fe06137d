"""The witness's rules (c2sp.org/tlog-witness, add-checkpoint), without HTTP.

`Witness.add_checkpoint` takes the request body and returns the cosignature lines, or
raises the `witness.errors` error whose `status` the protocol assigns. Every refusal of a
checkpoint whose log signature verified is counted and logged: it may be evidence of a
log that forked or rolled back (the spec's "MAY log the request").

The log's audit key may be rotated: a checkpoint with a ``cofre-key-handover`` line,
signed by both the key the witness trusts and the new key it names
(`audit.note.parse_handover`), is cosigned like any other (consistent with the last
one) and recorded; from then on only the new key's checkpoints are accepted. The new
key must also have been pinned beforehand by the witness's operator (`cofre witness
trust-key`, kept in the state), as transparency-dev witnesses pin each log's keys in
their own configuration: the old audit key lives on the vault's HSM, so one holder of
its PIN could sign a handover to a key of their own; a log's key change is a witness
operator's decision, not the log's alone. Every other checkpoint with a handover line is
refused, unless it is the very handover the witness followed, submitted again (review
36): a cosignature of a handover says the witness followed that key change, so one from
another key to the key trusted now, or the retired key's handover moved to a later
size, must not get one. All these checks are made against the handovers read once before the
storing transaction, which re-reads them and refuses the checkpoint (`HandoverRaced`,
"submit it again") if another submission, or another witness process on the same state
file, took a handover meanwhile: two handovers from one key to two pinned keys, or a
checkpoint of the key a handover just retired, are never both stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NoReturn

from audit.errors import NoteError, ProofError
from audit.merkle import EMPTY_ROOT, verify_consistency
from audit.note import (
    HANDOVER_EXTENSION,
    Checkpoint,
    CosignerKey,
    Handover,
    NoteSignature,
    VerifierKey,
    parse_checkpoint,
    parse_handover,
    parse_note,
)
from audit.note import verify_note as verify_note_signatures
from witness.errors import (
    CheckpointConflict,
    HandoverNotPinned,
    HandoverRaced,
    HandoverRefused,
    InconsistentCheckpoint,
    NoValidSignature,
    OldSizeInvalid,
    RequestMalformed,
    UnknownLog,
    WitnessError,
)
from witness.state import Cosigned, WitnessState

MAX_PROOF_LINES: Final = 63
MAX_BODY: Final = 16 * 1024
_log = logging.getLogger("cofre.witness")


def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """Split an add-checkpoint body into (old size, consistency proof, signed note).
    Raises `RequestMalformed`."""
    if len(body) > MAX_BODY:
        raise RequestMalformed("the request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestMalformed("the request body is not UTF-8") from None
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise RequestMalformed("no blank line between the proof and the checkpoint")
    lines = head.split("\n")
    old_line, proof_lines = lines[0], lines[1:]
    size_text = old_line.removeprefix("old ")
    if (
        size_text == old_line
        or not size_text.isascii()
        or not size_text.isdigit()
        or (size_text != "0" and size_text.startswith("0"))
        # No tree size has more than 19 digits (< 2^63); int() of over 4,300 raises
        # ValueError, which was a 500 with a logged traceback (atk49w).
        or len(size_text) > 19
    ):
        raise RequestMalformed("the first line must be 'old <size>'")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise RequestMalformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in proof_lines:
        try:
            proof.append(base64.b64decode(line, validate=True))
        except (binascii.Error, ValueError):
            raise RequestMalformed("a consistency proof line is not base64") from None
    return int(size_text), proof, note


def _verified_lines(
    text: str, signatures: Sequence[NoteSignature], keys: Sequence[VerifierKey]
) -> str:
    """The signature lines of `signatures` that one of `keys` verifies on `text`, each
    once, in their order; every other line (unknown keys, other witnesses' names, lines
    that do not verify) is left out."""
    lines: dict[str, None] = {}
    for signature in signatures:
        for key in keys:
            if not key.matches(signature):
                continue
            try:
                key.verify(text, signature.signature)
            except NoteError:
                continue
            lines[signature.line()] = None
            break
    return "".join(lines)


def _same_handover(one: Handover, other: Handover) -> bool:
    """Whether `one` and `other` hand the same key over to the same key at the same tree
    (signatures aside: a resubmission may carry them in another order)."""
    return (
        one.size == other.size
        and one.checkpoint.root == other.checkpoint.root
        and one.old == other.old
        and one.new == other.new
    )


class Witness:
    """Cosigns checkpoints of the logs it knows (origin -> the log's verifier keys)."""

    def __init__(
        self,
        key: CosignerKey,
        logs: Mapping[str, Sequence[VerifierKey]],
        state: WitnessState,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self._logs = {origin: list(keys) for origin, keys in logs.items()}
        self._state = state
        self._clock = clock
        self._counts_lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def _count(self, outcome: str) -> None:
        with self._counts_lock:
            self.counts[outcome] += 1

    def counted(self) -> dict[str, int]:
        """The requests by outcome so far, copied under the lock (a scrape that read
        `counts` while a request counted a new outcome raised "dictionary changed size
        during iteration": atk49w)."""
        with self._counts_lock:
            return dict(self.counts)

    def add_checkpoint(self, body: bytes) -> str:
        """Return the cosignature line(s) for the checkpoint in `body`; see the module
        docstring. Raises a `WitnessError` subclass (its `status` is the HTTP answer)."""
        try:
            lines = self._add(body)
        except WitnessError as exc:
            self._count(exc.code)
            raise
        self._count("cosigned")
        return lines

    def _add(self, body: bytes) -> str:
        old_size, proof, note = parse_request(body)
        try:
            text, signatures = parse_note(note)
        except NoteError as exc:
            raise RequestMalformed(f"the checkpoint is not a signed note: {exc}") from None
        origin = text.split("\n", 1)[0]
        pinned = self._logs.get(origin)
        if pinned is None:
            raise UnknownLog(f"no log with origin {origin[:100]!r} is configured")
        # Read once: the signature check, the handover check and the storing
        # transaction (which refuses if they changed meanwhile) see the same handovers.
        seen = self._state.handovers(origin)
        keys, since = self._current_keys(pinned, seen)
        try:
            verify_note_signatures(text, signatures, keys)
        except NoteError as exc:
            handed = "" if since is None else f" (the log's key was handed over at size {since})"
            raise NoValidSignature(f"{origin}: {exc}{handed}") from None
        try:
            checkpoint = parse_checkpoint(text)
        except NoteError as exc:
            raise RequestMalformed(f"{origin}: {exc}") from None
        handover = self._check_handover(origin, note, checkpoint, keys, seen)
        if old_size > checkpoint.size:
            raise OldSizeInvalid(
                f"{origin}: old size {old_size} is above the checkpoint's {checkpoint.size}"
            )
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            raise InconsistentCheckpoint(f"{origin}: size 0 with a root that is not empty")
        timestamp = max(1, int(self._clock()))
        cosignature = self.key.cosign(text, timestamp)
        # atk49w: only the lines this witness verified, and its own. Every other line the
        # submitter sent (anyone may resubmit the served note at its size) was served as
        # part of this witness's checkpoint: one under a retired audit key's ID made the
        # vault's `cofre audit verify`, which checks it with every key of the chain, fail.
        signers = list(keys)
        if any(line.startswith(HANDOVER_EXTENSION + " ") for line in checkpoint.extensions):
            followed = parse_handover(note)  # `_check_handover` verified it
            signers += [followed.old, followed.new]
        served = text + "\n" + _verified_lines(text, signatures, signers) + cosignature.line()

        def decide(current: Cosigned | None) -> Cosigned:
            self._check_consistent(
                origin,
                current,
                old_size=old_size,
                proof=proof,
                size=checkpoint.size,
                root=checkpoint.root,
            )
            return Cosigned(checkpoint.size, checkpoint.root, served)

        try:
            self._state.update(
                origin, decide, handovers_seen=seen, handover=note if handover else None
            )
        except HandoverRaced:
            _log.warning(
                "refused %s at size %d: a key handover was taken while it was checked",
                origin,
                checkpoint.size,
            )
            raise
        if handover:
            _log.warning(
                "accepted the audit key handover of %s at size %d", origin, checkpoint.size
            )
        _log.info("cosigned %s at size %d", origin, checkpoint.size)
        return cosignature.line()

    @staticmethod
    def _current_keys(
        pinned: list[VerifierKey], notes: list[str]
    ) -> tuple[list[VerifierKey], int | None]:
        """The keys that sign the log's checkpoints now, given the `pinned` keys and
        the handover `notes` followed, and the size of the handover that introduced them
        (None: the pinned keys). After a handover only the new key counts: the old one,
        which may have leaked, signs nothing more."""
        if not notes:
            return pinned, None
        last = parse_handover(notes[-1])
        return [last.new], last.size

    def _check_handover(
        self,
        origin: str,
        note: str,
        checkpoint: Checkpoint,
        keys: list[VerifierKey],
        seen: list[str],
    ) -> bool:
        """Return True when `note` is a key handover this witness may follow now: signed
        by both keys it names, from the key the witness trusts now (`keys`), to a key the
        log never had and the witness's operator pinned. Return False for a plain
        checkpoint and for the handover the witness followed already (`seen`, the
        handover notes the caller read), submitted again (same size, root, old and new
        key). Raises `NoValidSignature` for a forged handover, `HandoverRefused` for any
        other handover (from a key not trusted now, or to a key the log had before, the
        current one included), `HandoverNotPinned` for one to a key the operator did not
        pin. `WitnessState.update` refuses to store the checkpoint if `seen` changed."""
        if not any(line.startswith(HANDOVER_EXTENSION + " ") for line in checkpoint.extensions):
            return False
        try:
            handover = parse_handover(note)
        except NoteError as exc:
            raise NoValidSignature(f"{origin}: {exc}") from None
        followed = [parse_handover(n) for n in seen]
        if any(_same_handover(handover, before) for before in followed):
            return False  # the one it followed, submitted again: a checkpoint like any other
        # Review 36: a handover's signatures and a trusted new key are not enough. A
        # handover from another key to the key trusted now (a PIN holder's own key), or
        # the retired key's handover to the current key at another size, would get a
        # cosignature a verifier reads as the witness having followed that key chain.
        if handover.old not in keys:
            self._refuse(origin, handover, "starts from a key this witness does not trust now")
        if any(before.size == handover.size for before in followed):
            # A second handover at one size (same root, so consistent) would replace
            # the record of the first, which this witness cosigned (one row per size).
            self._refuse(
                origin,
                handover,
                "is a second at one size: this witness already followed a handover at this size",
            )
        had = [*self._logs[origin], *(h.old for h in followed), *(h.new for h in followed)]
        if handover.new in had:
            self._refuse(origin, handover, "hands over to a key the log had already")
        if not self._pinned(origin, handover.new):
            _log.error(
                "REFUSED KEY HANDOVER: %s at size %d hands over to %s, a key this "
                "witness's operator did not pin",
                origin,
                handover.size,
                handover.new.encode(),
            )
            # The reason first: the vault's publisher keeps the first 200 characters.
            raise HandoverNotPinned(
                f"{origin}: key handover at size {handover.size} refused: its new key is "
                "not pinned by the witness operator (`cofre witness trust-key`); the "
                f"current key stays trusted. New key: {handover.new.encode()}"
            )
        return True

    @staticmethod
    def _refuse(origin: str, handover: Handover, reason: str) -> NoReturn:
        """Log and raise `HandoverRefused` for `handover`, which `reason` describes."""
        _log.error(
            "REFUSED KEY HANDOVER: %s at size %d from %s to %s %s, and it is not the "
            "handover this witness followed",
            origin,
            handover.size,
            handover.old.encode(),
            handover.new.encode(),
            reason,
        )
        raise HandoverRefused(
            f"{origin}: key handover at size {handover.size} refused: it {reason}, and it "
            "is not the handover this witness followed; the current key stays trusted"
        )

    def _pinned(self, origin: str, key: VerifierKey) -> bool:
        """Whether the operator pinned `key` for `origin` (compared as keys, not text)."""
        for vkey in self._state.pinned_keys(origin):
            try:
                pinned = VerifierKey.parse(vkey)
            except NoteError:
                continue  # `trust-key` stores parsed keys only; a hand edit pins nothing
            if pinned == key:
                return True
        return False

    @staticmethod
    def _check_consistent(
        origin: str,
        current: Cosigned | None,
        *,
        old_size: int,
        proof: list[bytes],
        size: int,
        root: bytes,
    ) -> None:
        latest = 0 if current is None else current.size
        if old_size != latest:
            _log.warning(
                "refused %s at size %d: old size %d is not the last cosigned size %d",
                origin,
                size,
                old_size,
                latest,
            )
            raise CheckpointConflict(
                f"{origin}: old size {old_size} is not the last cosigned size {latest}", latest
            )
        if current is None or old_size == 0:
            if proof:
                raise InconsistentCheckpoint(f"{origin}: a proof from size 0 must be empty")
            return
        if size == old_size and root == current.root:
            # atk49w: the very head this witness holds, with a proof it does not need
            # (anyone can resubmit the served note so): a malformed request, not a fork.
            if proof:
                raise InconsistentCheckpoint(f"{origin}: equal sizes need an empty proof")
            return
        try:
            verify_consistency(old_size, size, proof, current.root, root)
        except ProofError as exc:
            # The log signed a checkpoint that does not extend the one cosigned: a fork
            # or a rollback. Worth an operator's attention.
            _log.error(
                "FORK OR ROLLBACK: refused %s at size %d, not consistent with size %d: %s",
                origin,
                size,
                old_size,
                exc,
            )
            raise InconsistentCheckpoint(
                f"{origin}: not consistent with the cosigned checkpoint of size {old_size}: {exc}"
            ) from None

    def latest_note(self, origin_hash: str) -> str | None:
        """Return the last cosigned checkpoint (as served) of the log whose origin's
        SHA-256 is `origin_hash` (lowercase hex), or None."""
        for origin in self._logs:
            if hashlib.sha256(origin.encode()).hexdigest() == origin_hash:
                latest = self._state.latest(origin)
                return None if latest is None else latest.note
        return None
