"""Building a signed PCI DSS evidence bundle (a tar.gz a QSA verifies offline), streamed
to a temporary file in constant memory whatever the period holds.

IN PCI SCOPE (as evidence). Never key material, never a PAN: audit entries are already
masked, the policy and configuration carry no secrets (`Settings.redacted`), the key
inventory lists attributes only.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import Engine, func, or_, select

from audit.heads import SignedTreeHead, TreeHeadSigner
from audit.merkle import hash_b64
from audit.publisher import witnessed_handover_notes, witnessed_note
from audit.retention import retired_overlapping
from audit.schema import READ_ONLY, audit_entries, audit_leaves
from audit.sequencer import Sequencer
from audit.store import AuditStore
from cofre import __version__
from cofre.dberrors import database_errors_as
from cofre_evidence_verifier.bundle import (
    BUNDLE_FORMAT,
    MANIFEST,
    OFFICER_AUTHORITIES,
    POLICY_ACTIONS,
    SIGNATURE,
)
from compliance._carried import stage_carried_originals
from compliance._covering import covering_head
from compliance._cutoff import sign_over_cutoff, write_cutoff
from compliance._deleted import stage_deleted_tokens
from compliance._relay_cas import relay_ca_inventory
from compliance.custody import custody_json
from compliance.dual_control import dual_control_json
from compliance.errors import ChainBroken, ComplianceError, EvidenceUnavailable
from policies.models import RelayRoute

ALL_PROOFS_UP_TO: Final = 5000
SAMPLE: Final = 1000
# Rows per keyset page: the export's memory is bounded by one page of entries or heads.
PAGE: Final = 1000
# Policy entries carry the whole policy text: fewer per page.
_POLICY_PAGE: Final = 50
AUTHORITIES_SOURCE: Final = (
    "the subjectAltName of the vault's TLS certificate at export: the hosts an officer's "
    "signed @authority must name, on one of the ports (443 when a Host names none)"
)
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
    # The names the vault takes as its own when it checks an officer's signed
    # `@authority` (`vault.officer_mfa.server_names` of its TLS certificate): the offline
    # verifier compares each ceremony's signed authority with them, or with the names
    # the auditor pins (the exporter writes this file, so the pin is the trust anchor).
    officer_authorities: Callable[[], Collection[str]] | None = None
    # The ports those requests may name (`vault.officer_mfa.officer_ports`).
    officer_ports: Collection[int] | None = None
    # Cosignatures the covering head should carry (`COFRE_AUDIT__WITNESS_QUORUM`).
    witness_quorum: int = 1
    # The policy in force's relay routes, read at export: their CA bundles join
    # `certificates` (4.2.1.1; `compliance._relay_cas`).
    relay_routes: Callable[[], Mapping[str, RelayRoute]] = dict
    # The payloads of retired leaves, read from the archive in the object store
    # (`audit.archived_entries`): the originals of registrations retention carried
    # forward (`compliance._carried`). None when no archive is configured.
    archived_entries: Callable[[Collection[int]], Mapping[int, str]] | None = None


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


def _refuse_retired(engine: Engine, period_from: datetime, period_to: datetime) -> None:
    """Raise `ComplianceError` when entries of the period were retired to the archive:
    a bundle of what is left online would claim the whole period."""
    retired = retired_overlapping(engine, period_from, period_to)
    if retired:
        raise ComplianceError(
            f"the audit entries of {', '.join(retired)} were retired to the archive: export "
            "a later period (the archive is checked with `cofre audit verify-archive`)"
        )


class _Member:
    """One file of the bundle, written to an anonymous temporary file (gone when closed,
    or when the process dies) while its SHA-256 and size are computed."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _Staging
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def jsonl(self, row: dict[str, Any]) -> None:
        self.write(json.dumps(row, sort_keys=True).encode() + b"\n")


class _Staging:
    """The bundle's files as they are streamed, before the tar.gz is assembled."""

    def __init__(self) -> None:
        self.members: dict[str, _Member] = {}

    def member(self, name: str) -> _Member:
        self.members[name] = _Member()
        return self.members[name]

    def add(self, name: str, data: bytes) -> None:
        self.member(name).write(data)

    def listing(self) -> list[dict[str, Any]]:
        """The manifest's `files`: every member with its size and SHA-256, by name."""
        return [
            {"path": name, "size": m.size, "sha256": m.digest.hexdigest()}
            for name, m in sorted(self.members.items())
        ]

    def close(self) -> None:
        for member in self.members.values():
            member.file.close()


def export_bundle(
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
) -> IO[bytes]:
    """Return the bundle for audit entries created in [from, to) as an anonymous
    temporary file (in ``$TMPDIR``), positioned at its start; the caller streams it and
    closes it, which deletes it. Raises what `write_bundle` raises, and
    `EvidenceUnavailable` when the temporary directory cannot hold the bundle (a full
    disk); no file is left behind."""
    try:
        bundle = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise EvidenceUnavailable(f"no temporary file for the bundle ({exc.strerror})") from None
    try:
        write_bundle(
            engine,
            signer,
            sequencer,
            sources,
            out=bundle,
            generator=generator,
            period_from=period_from,
            period_to=period_to,
            previous_manifest=previous_manifest,
            publish=publish,
        )
        bundle.seek(0)
    except OSError as exc:
        bundle.close()
        raise EvidenceUnavailable(
            f"the bundle could not be written to the temporary directory ({exc.strerror})"
        ) from None
    except BaseException:
        bundle.close()
        raise
    return bundle


# A database outage while the bundle is read leaves as `EvidenceUnavailable` (503).
@database_errors_as(EvidenceUnavailable, "the evidence sources")
def write_bundle(
    engine: Engine,
    signer: TreeHeadSigner,
    sequencer: Sequencer,
    sources: EvidenceSources,
    *,
    out: IO[bytes],
    generator: str,
    period_from: datetime,
    period_to: datetime,
    previous_manifest: bytes | None = None,
    publish: Callable[[], object] | None = None,
    page_size: int = PAGE,
) -> None:
    """Write the bundle (tar.gz) for audit entries created in [from, to) to `out`, in
    memory bounded by `page_size` rows whatever the period holds: entries and heads are
    read in keyset pages and streamed to temporary files while their SHA-256 is
    computed, the signed manifest is made last, and the archive is assembled from those
    files in chunks.

    Raises `ComplianceError` for a naive, empty or inverted period, `ChainBroken`,
    `EvidenceUnavailable` (or `AuditReadFailed`) when the database cannot be read.
    """
    if period_from.tzinfo is None or period_to.tzinfo is None:
        # Compared with the aware clock and the aware created_at column below.
        raise ComplianceError("the period's times must carry a time zone")
    if period_to <= period_from:
        raise ComplianceError("the period must end after it starts")
    # A period cannot claim a future it has not seen: entries written after this export
    # but dated before its end would belong to no bundle of a chain. It ends at the
    # latest with the export's own `evidence.cutoff` entry, which the head signed next
    # covers: so there is always an entry after the period, which the bundle shows as
    # its end boundary (review 29: without one, entries at the period's end could be
    # left out unseen).
    cutoff = write_cutoff(engine, generator)
    if cutoff <= period_from:
        raise ComplianceError("the period must not start in the future")
    period_to = min(period_to, cutoff)
    sign_over_cutoff(sequencer)
    if publish is not None:
        # The head just signed goes to the witnesses now, so the bundle can carry its
        # cosignatures (a witness that is down leaves an earlier witnessed head, if any).
        publish()
    _refuse_retired(engine, period_from, period_to)
    store = AuditStore(engine)
    with engine.execution_options(**READ_ONLY).connect() as connection:
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
    # Covering the end boundary too: the first entry after the period.
    covering = covering_head(engine, store, end + 1, page_size, quorum=sources.witness_quorum)
    if covering is None:  # pragma: no cover - drain() signed one
        raise ComplianceError("no signed tree head covers the period yet")
    size = covering.tree_size
    staging = _Staging()
    try:
        _stream_log(
            staging,
            store,
            sources.archived_entries,
            start=start,
            end=end,
            size=size,
            page_size=page_size,
        )
        _stage_boundaries(staging, store, start=start, end=end, size=size)
        # Every token deleted before the period, for check 6e across the chain.
        stage_deleted_tokens(
            staging.member("audit/deleted_tokens.txt").write,
            engine,
            before=period_from,
            page_size=page_size,
        )
        policy_text = _stream_policy_versions(
            staging, engine, store, start=start, end=end, size=size
        )
        _stage_keys(staging, engine, store, signer.public_key_pem(), covering)
        _stage_sources(staging, sources, period_from=period_from, period_to=period_to)
        # Each acknowledgement with its audit entry and inclusion proof (`compliance.custody`).
        staging.add("keys/custody.json", custody_json(engine, store, sources.custody(), size))
        # Each rotation's start, proposal and approvals (`compliance.dual_control`).
        staging.add(
            "keys/dual_control.json",
            dual_control_json(engine, store, start=start, end=end, size=size),
        )
        staging.add("policy/policy.toml", policy_text.encode())
        previous = None
        if previous_manifest is not None:
            previous = _signed_previous_head(store, json.loads(previous_manifest), size)
            size1 = int(previous["tree_size"])
            # Always present with a previous head (empty when the tree did not grow): the
            # verifier checks the previous head is a prefix of this bundle's covering head.
            staging.add(
                "audit/consistency.json",
                json.dumps(
                    {
                        "size1": size1,
                        "size2": size,
                        "proof": [hash_b64(h) for h in store.consistency_proof(size1, size)]
                        if size1 < size
                        else [],
                    }
                ).encode(),
            )
        staging.add(
            "requirements.md",
            _TEMPLATE.read_text(encoding="utf-8")
            .format(
                period_from=period_from.isoformat(),
                period_to=period_to.isoformat(),
                first=start,
                last=end - 1,
                count=end - start,
                size=size,
            )
            .encode(),
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
            "files": staging.listing(),
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        staging.add(MANIFEST, manifest_bytes)
        staging.add(SIGNATURE, signer.sign(manifest_bytes))
        _tar(staging, out)
    finally:
        staging.close()


def _stage_keys(
    staging: _Staging,
    engine: Engine,
    store: AuditStore,
    current_key: bytes,
    covering: SignedTreeHead,
) -> None:
    """Stage the audit public key, every audit key handover and the covering head's
    witnessed note."""
    staging.add("audit/public_key.pem", current_key)
    # Every handover of the audit key (signed by both keys, each naming its public
    # keys): the verifier follows them from the key the auditor pinned. Each carries
    # the witnesses' cosignatures of it, which a verifier requiring witnesses demands:
    # both keys' signatures prove only that someone with the HSM PIN signed it.
    handovers = witnessed_handover_notes(engine, store.handover_notes())
    if handovers:
        staging.add(
            "audit/handovers.jsonl",
            "".join(json.dumps({"note": note}) + "\n" for note in handovers).encode(),
        )
    # The covering head as a C2SP signed note: the vault's signature (by the key in
    # force at its size) and every witness's cosignature (c2sp.org/tlog-checkpoint,
    # tlog-cosignature).
    head_key = store.key_chain(current_key).pem_for(covering.tree_size)
    staging.add("audit/checkpoint.note", witnessed_note(engine, covering, head_key).encode())


def _stage_sources(
    staging: _Staging, sources: EvidenceSources, *, period_from: datetime, period_to: datetime
) -> None:
    """Stage what the bundle draws from besides the audit log (small documents)."""
    staging.add("keys/inventory.json", json.dumps(sources.key_inventory(), indent=2).encode())
    staging.add("keys/ceremonies.json", json.dumps(sources.ceremonies(), indent=2).encode())
    staging.add("config/settings.json", json.dumps(sources.settings, indent=2).encode())
    staging.add("tls/settings.json", json.dumps(sources.tls_settings, indent=2).encode())
    certificates = sources.certificates + relay_ca_inventory(sources.relay_routes())
    staging.add("tls/certificates.json", json.dumps(certificates, indent=2).encode())
    if sources.officer_authorities is not None:
        names: dict[str, Any] = {
            "names": sorted(sources.officer_authorities()),
            "source": AUTHORITIES_SOURCE,
        }
        if sources.officer_ports is not None:
            names["ports"] = sorted(sources.officer_ports)
        staging.add(OFFICER_AUTHORITIES, json.dumps(names, indent=2).encode())
    if sources.security_codes is not None:
        staging.add(
            "security_codes/counts.json",
            json.dumps(
                {
                    "period": {"from": _entry_time(period_from), "to": _entry_time(period_to)},
                    "counted_by": "whole hours overlapping the period",
                    "counts": sources.security_codes(period_from, period_to),
                },
                indent=2,
                sort_keys=True,
            ).encode(),
        )


def _stream_log(
    staging: _Staging,
    store: AuditStore,
    archived: Callable[[Collection[int]], Mapping[int, str]] | None,
    *,
    start: int,
    end: int,
    size: int,
    page_size: int,
) -> None:
    """Stream the period's entries, the heads up to the covering one, the subtree hashes
    around the period and the inclusion proofs, each in keyset pages; and the originals
    of registrations retention carried forward, from the database or the `archived`
    leaves (`compliance._carried`)."""
    stage_carried_originals(staging.add, store, archived, start=start, end=end, size=size)
    entries = staging.member("audit/entries.jsonl")
    at = start
    while at < end:
        page = store.entries_page(at, end, page_size)
        if not page:
            break
        for index, payload in page:
            entries.jsonl({"index": index, "payload": payload})
        at = page[-1][0] + 1
    heads = staging.member("audit/heads.jsonl")
    above = start
    while page_of_heads := store.heads_page(above, size, page_size):
        for head in page_of_heads:
            heads.jsonl(head.as_json())
        above = page_of_heads[-1].tree_size
    wanted = _blocks(0, start) + _blocks(end, size)
    nodes = store.subtree_hashes(set(wanted))
    subtrees = staging.member("audit/subtrees.jsonl")
    for level, index in wanted:
        subtrees.jsonl({"level": level, "index": index, "hash": hash_b64(nodes[(level, index)])})
    inclusion = staging.member("audit/inclusion.jsonl")
    for i in _proof_indices(start, end):
        inclusion.jsonl(
            {"index": i, "proof": [hash_b64(h) for h in store.inclusion_proof(i, size)]}
        )


def _stage_boundaries(
    staging: _Staging, store: AuditStore, *, start: int, end: int, size: int
) -> None:
    """Stage `audit/boundaries.jsonl`: the entries just outside the period, each with
    its inclusion proof in the tree of `size`. The one before the first (none when the
    period starts the log) is dated before the period and the one after the last at or
    after its end, so the verifier sees that no entry of the period was left out at
    either end (review 29). An entry retired to the archive is left out: the verifier
    then names the end it cannot see."""
    member = staging.member("audit/boundaries.jsonl")
    for index in (start - 1, end):
        page = store.entries_page(index, index + 1, 1) if 0 <= index < size else []
        for _, payload in page:
            proof = [hash_b64(h) for h in store.inclusion_proof(index, size)]
            member.jsonl({"index": index, "payload": payload, "proof": proof})


def _proof_indices(start: int, end: int) -> Iterator[int]:
    """The leaves whose inclusion proofs the bundle carries, in order: all of them up to
    `ALL_PROOFS_UP_TO`, else about `SAMPLE` evenly spaced ones plus the last (computed
    as they go, never listed: a period of millions costs no memory here)."""
    if end - start <= ALL_PROOFS_UP_TO:
        yield from range(start, end)
        return
    step = max(1, (end - start) // SAMPLE)
    yield from range(start, end, step)
    if (end - 1 - start) % step:
        yield end - 1


def _stream_policy_versions(
    staging: _Staging, engine: Engine, store: AuditStore, *, start: int, end: int, size: int
) -> str:
    """Stream the policy load/reload entries in force during leaves [start, end) to
    `policy/versions.jsonl`: the last one before the period and every one inside it
    (read in keyset pages), each with its inclusion proof in the tree of `size` (so an
    entry before the period is tied to the signed head too). Return the text of the last
    one ("" when there is none)."""
    # Canonical payloads sort their keys, so "action" is always first.
    is_policy = or_(
        *(audit_entries.c.payload.startswith(f'{{"action":"{a}",') for a in POLICY_ACTIONS)
    )
    query = (
        select(audit_leaves.c.leaf_index, audit_entries.c.payload)
        .join(audit_entries, audit_entries.c.id == audit_leaves.c.entry_id)
        .where(is_policy)
    )
    reader = engine.execution_options(**READ_ONLY)
    versions = staging.member("policy/versions.jsonl")
    last_payload = None
    with reader.connect() as connection:
        page = connection.execute(
            query.where(audit_leaves.c.leaf_index < start)
            .order_by(audit_leaves.c.leaf_index.desc())
            .limit(1)
        ).all()
    at = start
    while True:
        for index, payload in page:
            versions.jsonl(
                {
                    "index": int(index),
                    "payload": payload,
                    "proof": [hash_b64(h) for h in store.inclusion_proof(int(index), size)],
                }
            )
            last_payload = str(payload)
            at = max(at, int(index) + 1)
        with reader.connect() as connection:
            page = connection.execute(
                query.where(audit_leaves.c.leaf_index >= at, audit_leaves.c.leaf_index < end)
                .order_by(audit_leaves.c.leaf_index)
                .limit(_POLICY_PAGE)
            ).all()
        if not page:
            break
    if last_payload is None:
        return ""
    return str(json.loads(last_payload).get("document") or "")


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
    signed = store.head_at(size1)
    if signed is None or hash_b64(signed.root_hash) != root1:
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


def _tar(staging: _Staging, out: IO[bytes]) -> None:
    """Assemble the tar.gz from the staged files, in name order, copying each in chunks
    (`tarfile.addfile` reads its file object 16 KiB at a time)."""
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, member in sorted(staging.members.items()):
            info = tarfile.TarInfo(name)
            info.size = member.size
            info.mtime = 0
            info.mode = 0o644
            member.file.seek(0)
            archive.addfile(info, member.file)
