"""Review 35: work that grew with the product of two of a hostile bundle's sizes.

An operator holding the HSM PIN signs a log of their own making (it fails the witness
check, but only once every other check has run) that makes the verifier run for hours
on the auditor's machine, within every bound on its files:

- each key ceremony's check scanned, and sorted, every entry of the pool three times:
  five thousand `key.rotation.start` entries, each of another ceremony, took 92 s
  (2 s now), and the time grows with the square of their number: the sixty thousand
  here, hours;
- the policy version in force was found by a scan of every version, once per custody
  record and per ceremony;
- the key chain converted every one of its keys to PEM once per signed head (up to 64
  keys, two million heads).

Each is now a lookup. The first test runs the verifier in a child process with a bound
that only a hang reaches (it fails on nothing else); the others count the work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from cofre_evidence_verifier import keychain
from cofre_evidence_verifier.keychain import KeyChain
from cofre_evidence_verifier.merkle import CompactRange, leaf_hash
from cofre_evidence_verifier.policy import in_force
from tests.support.evidence_bundles import (
    AuditKey,
    Bundle,
    b64,
    day_log,
    handover,
    head_json,
    payload,
    policy_payload,
)

ROOT = Path(__file__).resolve().parents[2]
CEREMONIES = 60_000
# A hang, not a slow machine: the verifier needs seconds for this bundle.
HANG_SECONDS = 300

_CHILD = """
import sys
from pathlib import Path
from cofre_evidence_verifier.verify import verify_bundle
report = verify_bundle(
    Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), unsafe_no_witnesses=True,
    origin="cofre-audit/cofre",
)
print(report.ok, len(report.problems))
"""


def _many_ceremonies(path: Path) -> AuditKey:
    """A log signed with the operator's key: a policy load, then `CEREMONIES` starts of
    as many ceremonies nobody proposed, all in the period."""
    key = AuditKey()
    time = "2026-03-01T01:00:00.000000Z"
    log = [policy_payload("2026-03-01T00:00:00.000000Z")]
    log += [
        payload("key.rotation.start", time, key_id=f"c-{i}", details={"kind": "data"})
        for i in range(CEREMONIES)
    ]
    tree = CompactRange()
    for entry in log:
        tree.append(leaf_hash(entry.encode()))
    files: dict[str, bytes] = {}
    bundle = Bundle(key, files, {})
    bundle.set_jsonl("audit/entries.jsonl", [{"index": i, "payload": p} for i, p in enumerate(log)])
    bundle.set_jsonl("audit/heads.jsonl", [head_json(key, len(log), tree.root())])
    bundle.set_jsonl("policy/versions.jsonl", [{"index": 0, "payload": log[0], "proof": []}])
    bundle.manifest = {
        "format": "cofre-evidence/1",
        "period": {"from": "2026-03-01T00:00:00.000000Z", "to": "2026-03-02T00:00:00.000000Z"},
        "entries": {"first_index": 0, "end_index": len(log), "count": len(log)},
        "covering_head": {"tree_size": len(log), "root_hash": b64(tree.root())},
    }
    bundle.write(path)
    return key


@pytest.mark.slow
def test_many_ceremonies_do_not_hang_the_verifier(tmp_path: Path) -> None:
    key = _many_ceremonies(tmp_path / "b.tar.gz")
    (tmp_path / "audit.pem").write_bytes(key.pem)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "b.tar.gz"), str(tmp_path / "audit.pem")],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT / "verifier" / "src")},
        timeout=HANG_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("False"), result.stdout  # each start was proposed by nobody


class _Counted(list[tuple[int, dict[str, Any]]]):
    """A list that counts the items read from it."""

    reads = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            type(self).reads += 1
            yield item

    def __getitem__(self, at: Any) -> Any:
        type(self).reads += 1
        return super().__getitem__(at)


def test_the_policy_in_force_is_found_without_reading_every_version() -> None:
    versions = _Counted((i, {"n": i}) for i in range(0, 20_000, 2))
    _Counted.reads = 0
    for leaf in range(0, 20_000, 20):
        assert in_force(versions, leaf + 1)[0] == leaf
    assert in_force(versions, -5)[0] == 0  # older than every version: the first
    assert _Counted.reads < 1_001 * 40, _Counted.reads  # a bisection each, not a scan


def test_the_key_chain_converts_each_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [AuditKey() for _ in range(4)]
    log = day_log(20)
    notes = [handover(keys[n], keys[n + 1], log, 4 * (n + 1)) for n in range(3)]
    chain = KeyChain.build([keys[0].pem], notes)
    converted = 0
    load = serialization.load_der_public_key

    def counting(data: bytes) -> Any:
        nonlocal converted
        converted += 1
        return load(data)

    monkeypatch.setattr(keychain.serialization, "load_der_public_key", counting)
    for size in range(1, 1000):
        chain.pem_for(size % 20 + 1)
    assert converted <= len(chain.keys), converted
    assert [pem.startswith(b"-----BEGIN PUBLIC KEY") for pem in chain.pems()] == [True] * 4
