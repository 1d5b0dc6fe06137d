"""Review 29's attack on the evidence bundle's range: the operator, who holds the HSM
PIN and so signs whatever manifest it likes with the genuine audit key, hands the
auditor a bundle whose range leaves out entries of its period at the start or the end,
or all of them. The entries it does carry verify; what was left out sat behind subtree
hashes. The bundle now carries the entries just outside its range, each proven in the
covering head and dated outside the period (`audit/boundaries.jsonl`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from audit.merkle import hash_b64
from audit.store import AuditStore
from compliance.export import _blocks
from tests.api.conftest import VaultServer
from tests.support.vault_evidence import (
    audit_entries,
    members,
    set_audit_entries,
    verify_unwitnessed,
    write_members,
)

PAN = "4111111111111111"


def _forge(vault: VaultServer, files: dict[str, bytes], start: int, end: int, out: Path) -> Path:
    """The bundle as the PIN holder would re-cut it to leaves [start, end): the entries,
    subtree hashes and proofs of that range from the real log, the manifest re-listed
    and re-signed with the genuine audit key."""
    manifest = json.loads(files["manifest.json"])
    size = int(manifest["covering_head"]["tree_size"])
    set_audit_entries(
        files, [e for e in audit_entries(files) if start <= int(str(e["index"])) < end]
    )
    store = AuditStore(vault.runtime.engine)
    wanted = _blocks(0, start) + _blocks(end, size)
    nodes = store.subtree_hashes(set(wanted))
    files["audit/subtrees.jsonl"] = "".join(
        json.dumps({"level": level, "index": index, "hash": hash_b64(nodes[(level, index)])}) + "\n"
        for level, index in wanted
    ).encode()
    files["audit/inclusion.jsonl"] = "".join(
        line + "\n"
        for line in files["audit/inclusion.jsonl"].decode().splitlines()
        if start <= json.loads(line)["index"] < end
    ).encode()
    manifest["entries"] = {"first_index": start, "end_index": end, "count": end - start}
    manifest["files"] = [
        {
            "path": name,
            "size": len(files[name]),
            "sha256": hashlib.sha256(files[name]).hexdigest(),
        }
        for name in sorted(files)
        if name not in ("manifest.json", "manifest.sig")
    ]
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    files["manifest.sig"] = vault.runtime.sequencer.signer.sign(files["manifest.json"])
    return write_members(out, files)


def _range(files: dict[str, bytes]) -> tuple[int, int]:
    claimed = json.loads(files["manifest.json"])["entries"]
    return int(claimed["first_index"]), int(claimed["end_index"])


def test_the_genuine_bundle_shows_both_ends(exported: tuple[VaultServer, Path, bytes]) -> None:
    _, bundle, public_key = exported
    report = verify_unwitnessed(bundle, public_key)
    assert report.ok, report.problems
    assert any("nothing of the period is left out" in line for line in report.checks)


@pytest.mark.parametrize("where", ["start", "end", "all"])
def test_entries_of_the_period_left_out_are_seen(
    exported: tuple[VaultServer, Path, bytes], tmp_path: Path, where: str
) -> None:
    vault, bundle, public_key = exported
    files = members(bundle)
    start, end = _range(files)
    # A re-cut bundle keeps the genuine boundaries file; the one that would fit the new
    # range is of entries dated inside the period, which fails the same way.
    cut = {"start": (start + 4, end), "end": (start, end - 4), "all": (start + 6, start + 6)}
    forged = _forge(vault, files, *cut[where], tmp_path / "forged.tar.gz")
    report = verify_unwitnessed(forged, public_key)
    assert not report.ok
    assert any(p.startswith("audit/boundaries.jsonl") for p in report.problems), report.problems
