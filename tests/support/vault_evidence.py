"""Evidence bundles of a running test vault (`tests.api.conftest.running_vault`): export
one as the auditor, read and rewrite its files, verify it, and do what the operator who
holds the database and the HSM PIN can (write an audit entry, re-sign a manifest).

The evidence tests each had their own copy of these; one copy here keeps them alike.
Synthetic bundles made with no vault at all are `tests.support.evidence_bundles`'."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.api.conftest import VaultServer

# The test vaults' log (`cofre-audit/<log id>`, the settings' default log id): what an
# auditor pins with `--origin`.
VAULT_ORIGIN: Final = "cofre-audit/cofre"


def whole_log() -> datetime:
    """A period start before the test vault's first start, so the bundle holds its log
    from entry 0. A period begun "a second ago" can open among the first start's own
    entries on a slow machine (CI, session 39: 1.8 s from the start's policy load to the
    test body), and check 6d then rightly names its version-1 registrations as made
    after the log's first start: a test that expects VERIFIED takes the whole log."""
    return datetime.now(UTC) - timedelta(hours=1)


def export_response(
    vault: VaultServer,
    since: datetime | str,
    previous_head: object | None = None,
    previous_end_index: int | None = None,
) -> httpx.Response:
    """POST /v1/evidence as the auditor, for `since` until a little after now."""
    body: dict[str, object] = {
        "from": since if isinstance(since, str) else since.isoformat(),
        "to": (datetime.now(UTC) + timedelta(seconds=5)).isoformat(),
    }
    if previous_head is not None:
        body["previous_head"] = previous_head
    if previous_end_index is not None:
        body["previous_end_index"] = previous_end_index
    with vault.client("auditor") as c:
        return c.post("/v1/evidence", json=body)


def export_to(vault: VaultServer, since: datetime, out: Path) -> Path:
    """The bundle for `since` until a little after now, written to `out`."""
    response = export_response(vault, since)
    assert response.status_code == 200, response.text
    out.write_bytes(response.content)
    return out


def verify_unwitnessed(path: Path, key: bytes, previous: Path | None = None) -> Report:
    """The checks the evidence tests are about; the witness check has its own tests
    (test_witnessed_evidence.py), with a witness process these vaults do not run."""
    return verify_bundle(path, key, previous, unsafe_no_witnesses=True, origin=VAULT_ORIGIN)


def verify_by_vault_key(bundle: Path, vault: VaultServer) -> Report:
    """`bundle` verified (witnesses aside) with the audit key of `vault`'s signer."""
    return verify_unwitnessed(bundle, vault.runtime.sequencer.signer.public_key_pem())


def members(bundle: Path) -> dict[str, bytes]:
    """The files of a bundle, by name."""
    with tarfile.open(bundle, "r:gz") as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }


def write_members(path: Path, files: dict[str, bytes]) -> Path:
    """`files` as a bundle (tar.gz) at `path`, as they are: nothing re-hashed or signed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


def audit_entries(files: dict[str, bytes]) -> list[dict[str, object]]:
    """The bundle's audit/entries.jsonl, one dict an entry."""
    return [json.loads(line) for line in files["audit/entries.jsonl"].decode().splitlines()]


def set_audit_entries(files: dict[str, bytes], entries: list[dict[str, object]]) -> None:
    """Replace the bundle's audit/entries.jsonl with `entries`."""
    files["audit/entries.jsonl"] = "".join(
        json.dumps(e, sort_keys=True) + "\n" for e in entries
    ).encode()


def resign_manifest(vault: VaultServer, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """Put `manifest` into `files` as the bundle's manifest.json, each file it lists
    re-hashed from `files`, and its manifest.sig signed with the vault's own audit key
    (the HSM PIN holder can)."""
    for listed in manifest["files"]:
        data = files[listed["path"]]
        listed["size"], listed["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    files["manifest.sig"] = vault.runtime.sequencer.signer.sign(files["manifest.json"])


def resigned(vault: VaultServer, bundle: Path, out: Path, change: dict[str, bytes]) -> Path:
    """`bundle` with the files of `change` replaced, its manifest re-hashed and re-signed
    with the vault's own audit key (the HSM PIN holder can)."""
    files = members(bundle)
    files.update(change)
    resign_manifest(vault, files, json.loads(files["manifest.json"]))
    return write_members(out, files)


def write_entry(  # noqa: PLR0917 - an entry's parts, in the order AuditEvent has them
    vault: VaultServer,
    action: str,
    actor: str,
    key_id: str | None,
    details: dict[str, DetailValue],
    document: str | None = None,
) -> None:
    """What the operator can do: an audit entry in the vault's own format, in the log."""
    event = AuditEvent(
        action=action,
        outcome=Outcome.SUCCESS,
        actor=actor,
        key_id=key_id,
        details=details,
        document=document,
    )
    with vault.runtime.engine.begin() as connection:
        AuditLog().append(connection, event)


def write_handover(
    vault: VaultServer, actor: str, old_key: str, new_key: str, ceremony: str
) -> None:
    """An audit-key handover entry from `old_key` to `new_key` naming `ceremony`, as the
    operator can write one (the vault writes it when an audit-key rotation completes)."""
    details: dict[str, DetailValue] = {
        "ceremony": ceremony,
        "old_key": old_key,
        "new_key": new_key,
        "tree_size": 1,
    }
    write_entry(vault, "audit.key.handover", actor, new_key, details)


def verifier_cli(
    bundle: Path, pem: Path, previous: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The auditor's command on `bundle` with the audit key `pem`, for the test vaults'
    origin (or chained to the `previous` bundle, which pins it), witnesses aside (their
    checks are test_witnessed_evidence.py's)."""
    command = [sys.executable, "-m", "cofre_evidence_verifier", str(bundle), "--public-key"]
    pin = ["--origin", VAULT_ORIGIN] if previous is None else ["--previous", str(previous)]
    return subprocess.run(
        [*command, str(pem), "--unsafe-no-witness", *pin],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
