"""`cofre witness serve` as its own process, driven with transparency-dev/witness's
vectors (a log key, checkpoints of size 5 and 8, the proof between them): each rule of
c2sp.org/tlog-witness add-checkpoint, and the refusal of a fork and a rollback."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.pki import ensure_dev_pki
from audit.merkle import EMPTY_ROOT, leaf_hash
from audit.note import Checkpoint, CosignerKey, VerifierKey, open_note, parse_note
from audit.note import add_checkpoint_body as format_request
from tests.support.vectors import c2sp_notes
from tests.support.witness_process import WitnessProcess
from witness.client import submit_checkpoint
from witness.core import parse_request
from witness.errors import WitnessUnreachable

W: dict[str, Any] = c2sp_notes()["witness"]
PROOF = [base64.b64decode(h) for h in W["consistency_5_8"]]
LOG = CosignerKey.parse(W["log_skey"])


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WitnessProcess]:
    process = WitnessProcess(
        tmp_path_factory.mktemp("witness"), [W["log_vkey"]], skey=W["witness_skey"]
    )
    process.start()
    yield process
    process.stop()


def _signed(size: int, root: bytes, origin: str = "monkeys") -> str:
    text = Checkpoint(origin, size, root).text()
    return text + "\n" + LOG.sign_note(text).line()


def _cosigned_by(witness: WitnessProcess, note: str, answer: str) -> int | None:
    text, signatures = parse_note(note)
    merged = text + "\n" + "".join(s.line() for s in signatures) + answer
    _, verified = open_note(merged, [VerifierKey.parse(witness.vkey)])
    return verified[0].timestamp


def test_the_witness_walks_the_protocol(witness: WitnessProcess) -> None:
    # The first checkpoint: old size 0 and no proof.
    first = witness.post(format_request(0, [], W["init"]))
    assert first.status_code == 200, first.text
    assert _cosigned_by(witness, W["init"], first.text) is not None
    # Its key is not the log's: the witness never signs as anyone else.
    assert W["witness_skey"] not in witness.logged()

    # A proof from 0 once the witness has seen 5: 409 with the size it has.
    stale = witness.post(format_request(0, [], W["next"]))
    assert stale.status_code == 409
    assert stale.headers["content-type"] == "text/x.tlog.size"
    assert stale.text == "5\n"

    # A wrong proof from 5 to 8: 422, and nothing changes.
    bad = witness.post(format_request(5, [*PROOF[:-1], b"\x00" * 32], W["next"]))
    assert bad.status_code == 422

    # The right proof: cosigned, and served on the monitoring path.
    second = witness.post(format_request(5, PROOF, W["next"]))
    assert second.status_code == 200, second.text
    assert _cosigned_by(witness, W["next"], second.text) is not None
    served = witness.get(f"/{hashlib.sha256(b'monkeys').hexdigest()}/checkpoint")
    assert served.status_code == 200
    assert served.text.startswith("monkeys\n8\n")
    open_note(served.text, [VerifierKey.parse(witness.vkey), VerifierKey.parse(W["log_vkey"])])

    # Submitting the same size again (same root) is fine: a fresh cosignature.
    again = witness.post(format_request(8, [], W["next"]))
    assert again.status_code == 200


def test_fork_and_rollback_are_refused(witness: WitnessProcess) -> None:
    # The log (its key stolen, or restored from a backup) signs another tree of size 8.
    forked = _signed(8, leaf_hash(b"another history"))
    assert witness.post(format_request(8, [], forked)).status_code == 422
    # ... or one that grows from a different size 5.
    grown = _signed(9, leaf_hash(b"grown from another 5"))
    refused = witness.post(format_request(5, PROOF, grown))
    assert refused.status_code == 409
    assert refused.text == "8\n"
    # The rolled-back head of size 5 again: old size 8 is above its size: 400.
    assert witness.post(format_request(8, [], W["init"])).status_code == 400
    # ... and presented as new (old 0): 409, the witness remembers 8.
    assert witness.post(format_request(0, [], W["init"])).status_code == 409
    metrics = witness.get("/metrics").text
    assert 'outcome="witness_inconsistent"' in metrics
    assert 'outcome="witness_conflict"' in metrics


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (lambda: format_request(0, [], _signed(1, leaf_hash(b"x"), origin="elsewhere")), 404),
        (lambda: format_request(0, [], W["init"].replace("202ff", "202fe")), 403),
        (lambda: format_request(0, [], "monkeys\n5\nAAAA\n\n— x AAAAAAA=\n"), 403),
        (lambda: b"old 1\n\n" + W["init"].encode(), 409),
        (lambda: b"0\n\n" + W["init"].encode(), 400),
        (lambda: b"old 01\n\n" + W["init"].encode(), 400),
        (lambda: b"old 0\n" + W["init"].encode(), 400),
        (lambda: b"old 0\n!!\n\n" + W["init"].encode(), 400),
        (lambda: b"\xff\xfe", 400),
    ],
)
def test_malformed_and_untrusted_requests(witness: WitnessProcess, body: Any, status: int) -> None:
    assert witness.post(body()).status_code == status


def test_an_empty_tree_needs_the_empty_root(tmp_path: Path) -> None:
    process = WitnessProcess(tmp_path, [W["log_vkey"]])
    process.start()
    try:
        assert process.post(format_request(0, [], _signed(0, b"\x01" * 32))).status_code == 422
        assert process.post(format_request(0, [], _signed(0, EMPTY_ROOT))).status_code == 200
        assert process.post(format_request(0, [PROOF[0]], W["init"])).status_code == 422
    finally:
        process.stop()


def test_request_format_round_trips() -> None:
    body = format_request(5, PROOF, W["next"])
    assert parse_request(body) == (5, PROOF, W["next"])
    assert body.startswith(b"old 5\n" + base64.b64encode(PROOF[0]) + b"\n")


def test_the_witness_serves_tls_when_given_a_certificate(tmp_path: Path) -> None:
    """TLS is optional in tlog-witness; with a certificate the witness speaks only TLS
    and the vault's client verifies it against the CA it is given."""
    pki = ensure_dev_pki(tmp_path / "pki", identities=())
    process = WitnessProcess(
        tmp_path / "w",
        [W["log_vkey"]],
        extra_args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        ca_file=pki.ca,
    )
    process.start()
    try:
        assert process.url.startswith("https://")
        answer = submit_checkpoint(process.url, format_request(0, [], W["init"]), ca_file=pki.ca)
        assert answer.status == 200
        _cosigned_by(process, W["init"], answer.text)
        # Without the CA, the client refuses the connection: no answer, never a guess.
        with pytest.raises(WitnessUnreachable):
            submit_checkpoint(process.url, format_request(5, [], W["init"]))
    finally:
        process.stop()


def test_a_witness_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    process = WitnessProcess(tmp_path, [W["log_vkey"]])
    (tmp_path / "witness.key").chmod(0o644)
    with pytest.raises(RuntimeError, match=r"witness key file .* is readable by every user"):
        process.start(timeout=60)
