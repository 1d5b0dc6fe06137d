"""Building a signed PCI DSS evidence bundle (a tar.gz a QSA verifies offline).

IN PCI SCOPE (as evidence). Never key material, never a PAN: audit entries are already
masked, the policy and configuration carry no secrets (`Settings.redacted`), the key
inventory lists attributes only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, func, or_, select

from audit.heads import TreeHeadSigner
from audit.merkle import hash_b64
from audit.publisher import cosignatures_of, witnessed_note
from audit.retention import retired_overlapping
from audit.schema import READ_ONLY, audit_entries, audit_leaves
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre import __version__
from cofre.dberrors import database_errors_as
from cofre_evidence_verifier.bundle import BUNDLE_FORMAT, MANIFEST, POLICY_ACTIONS, SIGNATURE
from compliance.errors import ChainBroken, ComplianceError, EvidenceUnavailable

ALL_PROOFS_UP_TO: Final = 5000
SAMPLE: Final = 1000
_TEMPLATE: Final = Path(__file__).with_name("requirements.md.tmpl")


@dataclass(frozen=True)
class EvidenceSources:
    """What the bundle draws from besides the audit log."""

    key_inventory: Callable[[], dict[str, Any]]
    ceremonies: Callable[[], list[dict[str, Any]]]
    settings: dict[str, Any]
    tls_settings: dict[str, Any]
    certificates: list[dict[str, str]]
    # Key custodians' signed acknowledgements (`vault.custody`), every one recorded.
    custody: Callable[[], list[dict[str, Any]]] = list
    # Card security codes held, used and expired in [from, to) (PCI DSS 3.3.1, 3.3.2):
    # counts only, never a code (`VaultService.security_code_counts`).
    security_codes: Callable[[datetime, datetime], dict[str, int]] | None = None


def _blocks(start: int, end: int) -> list[tuple[int, int]]:
    """Aligned complete subtrees (level, index) that exactly tile leaves [start, end)."""
    out = []
    position = start
    while position < end:
        level = 0
        while (position % (1 << (level + 1)) == 0) and position + (1 << (level + 1)) <= end:
            level += 1
        out.append((level, position >> level))
        position += 1 << level
    return out


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


def _refuse_retired(engine: Engine, period_from: datetime, period_to: datetime) -> None:
    """Raise `ComplianceError` when entries of the period were retired to the archive:
    a bundle of what is left online would claim the whole period."""
    retired = retired_overlapping(engine, period_from, period_to)
    if retired:
        raise ComplianceError(
            f"the audit entries of {', '.join(retired)} were retired to the archive: export "
            "a later period (the archive is checked with `cofre audit verify-archive`)"
        )


# A database outage while the bundle is read leaves as `EvidenceUnavailable` (503).
@database_errors_as(EvidenceUnavailable, "the evidence sources")
def build_bundle(
    engine: Engine,
    signer: TreeHeadSigner,
    sequencer: Sequencer,
    sources: EvidenceSources,
    *,
    generator: str,
    period_from: datetime,
    period_to: datetime,
    previous_manifest: bytes | None = None,
    publish: Callable[[], object] | None = None,
) -> bytes:
    """Return the bundle (tar.gz bytes) for audit entries created in [from, to).

    Raises `ComplianceError` for an empty or inverted period, `EvidenceUnavailable` when
    the database cannot be read.
    """
    if period_to <= period_from:
        raise ComplianceError("the period must end after it starts")
    sequencer.drain(force_sign=True)
    if publish is not None:
        # The head just signed goes to the witnesses now, so the bundle can carry its
        # cosignatures (a witness that is down leaves an earlier witnessed head, if any).
        publish()
    # A period cannot claim a future it has not seen: entries written after this export
    # but dated before its end would belong to no bundle of a chain.
    period_to = min(period_to, datetime.now(UTC))
    if period_to <= period_from:
        raise ComplianceError("the period must not start in the future")
    _refuse_retired(engine, period_from, period_to)
    store = AuditStore(engine)
    reader = engine.execution_options(**READ_ONLY)
    with reader.connect() as connection:
        first, last = connection.execute(
            select(func.min(audit_leaves.c.leaf_index), func.max(audit_leaves.c.leaf_index))
            .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
            .where(
                audit_entries.c.created_at >= period_from, audit_entries.c.created_at < period_to
            )
        ).one()
    if first is None:
        raise ComplianceError("no audit entries in that period")
    start, end = int(first), int(last) + 1
    if previous_manifest is not None:
        _check_chain_start(json.loads(previous_manifest), start, end)
    candidates = [h for h in store.heads() if h.tree_size >= end]
    # The first head that covers the period and that witnesses cosigned, else the first.
    covering = next(
        (h for h in candidates if cosignatures_of(engine, h.tree_size)),
        candidates[0] if candidates else None,
    )
    if covering is None:  # pragma: no cover - drain() signed one
        raise ComplianceError("no signed tree head covers the period yet")
    size = covering.tree_size
    entries: list[dict[str, Any]] = [
        {"index": i, "payload": p} for i, p in store.iter_entries(start, end)
    ]
    wanted = _blocks(0, start) + _blocks(end, size)
    nodes = store.subtree_hashes(set(wanted))
    subtrees = [{"level": lv, "index": ix, "hash": hash_b64(nodes[(lv, ix)])} for lv, ix in wanted]
    indices = list(range(start, end))
    if len(indices) > ALL_PROOFS_UP_TO:
        step = max(1, len(indices) // SAMPLE)
        indices = sorted(set(indices[::step]) | {start, end - 1})
    inclusion = [
        {"index": i, "proof": [hash_b64(h) for h in store.inclusion_proof(i, size)]}
        for i in indices
    ]
    heads = [h.as_json() for h in store.heads() if start < h.tree_size <= size]
    policy_versions = _policy_versions(engine, store, start, end, size)
    policy_text = (
        str(json.loads(policy_versions[-1]["payload"]).get("document") or "")
        if policy_versions
        else ""
    )
    files: dict[str, bytes] = {
        "audit/entries.jsonl": _jsonl(entries),
        "audit/heads.jsonl": _jsonl(heads),
        "audit/subtrees.jsonl": _jsonl(subtrees),
        "audit/inclusion.jsonl": _jsonl(inclusion),
        "audit/public_key.pem": signer.public_key_pem(),
        # The covering head as a C2SP signed note: the vault's signature and every
        # witness's cosignature (c2sp.org/tlog-checkpoint, tlog-cosignature).
        "audit/checkpoint.note": witnessed_note(engine, covering, signer.public_key_pem()).encode(),
        "keys/inventory.json": json.dumps(sources.key_inventory(), indent=2).encode(),
        "keys/ceremonies.json": json.dumps(sources.ceremonies(), indent=2).encode(),
        "keys/custody.json": json.dumps(sources.custody(), indent=2).encode(),
        "policy/versions.jsonl": _jsonl(policy_versions),
        "policy/policy.toml": policy_text.encode(),
        "config/settings.json": json.dumps(sources.settings, indent=2).encode(),
        "tls/settings.json": json.dumps(sources.tls_settings, indent=2).encode(),
        "tls/certificates.json": json.dumps(sources.certificates, indent=2).encode(),
    }
    if sources.security_codes is not None:
        files["security_codes/counts.json"] = json.dumps(
            {
                "period": {"from": _entry_time(period_from), "to": _entry_time(period_to)},
                "counted_by": "whole hours overlapping the period",
                "counts": sources.security_codes(period_from, period_to),
            },
            indent=2,
            sort_keys=True,
        ).encode()
    previous = None
    if previous_manifest is not None:
        previous = _signed_previous_head(store, json.loads(previous_manifest), size)
        size1 = int(previous["tree_size"])
        # Always present with a previous head (empty when the tree did not grow): the
        # verifier checks the previous head is a prefix of this bundle's covering head.
        files["audit/consistency.json"] = json.dumps(
            {
                "size1": size1,
                "size2": size,
                "proof": [hash_b64(h) for h in store.consistency_proof(size1, size)]
                if size1 < size
                else [],
            }
        ).encode()
    files["requirements.md"] = (
        _TEMPLATE.read_text(encoding="utf-8")
        .format(
            period_from=period_from.isoformat(),
            period_to=period_to.isoformat(),
            first=start,
            last=end - 1,
            count=end - start,
            size=size,
        )
        .encode()
    )
    manifest = {
        "format": BUNDLE_FORMAT,
        "vault_version": __version__,
        "generated_at": datetime.now(UTC).isoformat(),
        "generator": generator,
        "period": {"from": _entry_time(period_from), "to": _entry_time(period_to)},
        "entries": {"first_index": start, "end_index": end, "count": end - start},
        "covering_head": {"tree_size": size, "root_hash": hash_b64(covering.root_hash)},
        "previous_head": previous,
        "policy_sha256": hashlib.sha256(policy_text.encode()).hexdigest(),
        "files": [
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in sorted(files.items())
        ],
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    files[MANIFEST] = manifest_bytes
    files[SIGNATURE] = signer.sign(manifest_bytes)
    return _tar(files)


def _policy_versions(
    engine: Engine, store: AuditStore, start: int, end: int, size: int
) -> list[dict[str, Any]]:
    """The policy load/reload entries in force during leaves [start, end): the last one
    before the period and every one inside it, each with its inclusion proof in the tree
    of `size` (so an entry before the period is tied to the signed head too)."""
    # Canonical payloads sort their keys, so "action" is always first.
    is_policy = or_(
        *(audit_entries.c.payload.startswith(f'{{"action":"{a}",') for a in POLICY_ACTIONS)
    )
    query = (
        select(audit_leaves.c.leaf_index, audit_entries.c.payload)
        .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
        .where(is_policy)
    )
    with engine.execution_options(**READ_ONLY).connect() as connection:
        before = connection.execute(
            query.where(audit_leaves.c.leaf_index < start)
            .order_by(audit_leaves.c.leaf_index.desc())
            .limit(1)
        ).all()
        during = connection.execute(
            query.where(
                audit_leaves.c.leaf_index >= start, audit_leaves.c.leaf_index < end
            ).order_by(audit_leaves.c.leaf_index)
        ).all()
    return [
        {
            "index": int(index),
            "payload": payload,
            "proof": [hash_b64(h) for h in store.inclusion_proof(int(index), size)],
        }
        for index, payload in [*before, *during]
    ]


def _signed_previous_head(store: AuditStore, previous: dict[str, Any], size: int) -> dict[str, Any]:
    """The previous bundle's covering head, if it is a head this log signed and not newer
    than `size`. Raises `ComplianceError` otherwise: the vault signs the manifest, so it
    must not vouch for a head it never signed (an outside review got one of size
    99,999,999 with root "x" signed and verified)."""
    try:
        size1 = int(previous["covering_head"]["tree_size"])
        root1 = str(previous["covering_head"]["root_hash"])
    except (KeyError, TypeError, ValueError):
        raise ComplianceError("the previous head needs a tree_size and a root_hash") from None
    if not any(h.tree_size == size1 and hash_b64(h.root_hash) == root1 for h in store.heads()):
        raise ComplianceError(
            f"the previous head (tree size {size1}) is not a tree head this log signed"
        )
    if size1 > size:
        raise ComplianceError(
            f"the previous head (tree size {size1}) is newer than this bundle's covering "
            f"head ({size}): export the periods in order"
        )
    return {"tree_size": size1, "root_hash": root1}


def _check_chain_start(previous: dict[str, Any], start: int, end: int) -> None:
    """Refuse a chained bundle that would not start exactly where the previous ended.

    Raises `ChainBroken` naming the entries that would be in neither bundle (a gap) or
    in both (an overlap). Without the previous bundle's end the verifier still checks.
    """
    entries = previous.get("entries")
    if not isinstance(entries, dict) or entries.get("end_index") is None:
        return
    previous_end = int(entries["end_index"])
    if start > previous_end:
        raise ChainBroken(
            f"entries {previous_end}..{start - 1} would be in neither bundle: start the "
            "period where the previous bundle's period ended"
        )
    if start < previous_end:
        raise ChainBroken(
            f"entries {start}..{min(previous_end, end) - 1} are already in the previous "
            "bundle and would be in both bundles: start the period where the previous "
            "bundle's period ended"
        )


def _entry_time(at: datetime) -> str:
    # The spelling audit entries use, so the verifier compares strings.
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()
