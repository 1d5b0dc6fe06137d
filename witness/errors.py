"""Errors of the witness, each with the HTTP status c2sp.org/tlog-witness assigns.

CofreError
└── WitnessError
    ├── RequestMalformed        400  the body is not old/proof/blank/checkpoint
    ├── OldSizeInvalid          400  the old size is above the checkpoint's size
    ├── UnknownLog              404  no log with this origin is configured
    ├── NoValidSignature        403  no valid signature by the log's key
    ├── HandoverNotPinned       403  a key handover to a key the operator did not pin
    ├── HandoverRefused         403  a key handover not from the key trusted now, or
    │                                to a key the log had before, and not the one followed
    ├── HandoverRaced           403  the log's key changed (a handover was stored) while
    │                                this checkpoint was checked: submit it again
    ├── CheckpointConflict      409  the old size is not the last cosigned size
    ├── InconsistentCheckpoint  422  bad proof, same size other root, bad empty tree
    ├── WitnessStateFailed      500  the witness's own state file failed
    └── WitnessUnreachable      (client side) the witness did not answer
"""

from __future__ import annotations

from typing import ClassVar

from cofre.errors import CofreError


class WitnessError(CofreError):
    code = "witness_error"
    status: ClassVar[int] = 500


class RequestMalformed(WitnessError):
    code = "witness_request_malformed"
    status = 400


class OldSizeInvalid(WitnessError):
    code = "witness_old_size_invalid"
    status = 400


class UnknownLog(WitnessError):
    code = "witness_unknown_log"
    status = 404


class NoValidSignature(WitnessError):
    code = "witness_no_valid_signature"
    status = 403


class HandoverNotPinned(WitnessError):
    """A key handover, signed by the key the witness trusts, to a new key its operator
    never pinned (`cofre witness trust-key`): whoever can sign with the current key (an
    HSM PIN holder) must not be able to move the witness to a key of their choosing."""

    code = "witness_handover_not_pinned"
    status = 403


class HandoverRefused(WitnessError):
    """A key handover that is neither the one the witness followed (submitted again) nor
    a new one from the key it trusts now to a key the log never had (review 36): a PIN
    holder's handover from their own key to the current one, or the retired key's
    handover to the current key moved to a later size, would otherwise be cosigned and
    make a verifier take a key chain the witness never followed."""

    code = "witness_handover_refused"
    status = 403


class HandoverRaced(WitnessError):
    """The handovers the checkpoint was checked against (which key signs now, which
    handover was followed) changed before it was stored: another submission, or another
    witness process on the same state file, stored a handover meanwhile. Storing it
    anyway could follow two handovers from one key, or cosign a checkpoint of the key
    just retired. Not a 409: in tlog-witness a 409 names the witness's size
    (text/x.tlog.size), which a submitter would retry from. Submitted again, the
    checkpoint is checked against the key trusted now."""

    code = "witness_handover_raced"
    status = 403


class CheckpointConflict(WitnessError):
    """The submitter's old size is not the witness's; `latest_size` is the witness's."""

    code = "witness_conflict"
    status = 409

    def __init__(self, message: str, latest_size: int) -> None:
        super().__init__(message)
        self.latest_size = latest_size


class InconsistentCheckpoint(WitnessError):
    code = "witness_inconsistent"
    status = 422


class WitnessStateFailed(WitnessError):
    code = "witness_state_failed"
    status = 500


class WitnessUnreachable(WitnessError):
    code = "witness_unreachable"
