"""Key rotation under dual control (PCI DSS 4.0.1 req. 3.6.1.2, 3.7.4, 3.7.6).

IN PCI SCOPE, holds keys. A security officer proposes a rotation; it runs only after
enough *other* officers approve it (the proposer counts as one of the `M` officers the
policy requires, never as an approver, and nobody counts twice). Proposals expire. Every
step is an audit entry: proposal, each approval, start, progress checkpoints,
completion, destruction.

The kinds: `vault.ceremony.RotationKind`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, update

from audit.log import AuditEvent, AuditLog, DetailValue, Outcome
from audit.schema import READ_ONLY
from cofre.dberrors import database_errors_as
from hsm.keys import KeyHierarchy, KeyKind, key_label
from hsm.provider import HSMProvider
from policies.engine import PolicyEngine
from policies.errors import PolicyDenied
from policies.models import Action
from vault._ceremony_guards import (
    ApprovalKeys,
    discard_unrecorded,
    hold_ceremony_lock,
    proposal_life,
    proposal_mark,
    refuse_a_second_run,
    standing_approvals,
)
from vault._ceremony_view import ceremony_view
from vault._custody_gate import custody_refusal, refuse_late_custody
from vault._retired_keys import retired_through
from vault._rotation_batches import BATCH, RotationBatches
from vault._signed_registration import ceremony_document, start_registration
from vault.approval_proof import SignedAction
from vault.audit_rotation import AuditKeyRotation
from vault.ceremony import Ceremony, CeremonyState, OfficerCertificate, RotationKind
from vault.errors import (
    CeremonyError,
    CeremonyNotFound,
    CeremonyRefused,
    KeyNotRegistered,
    StorageUnavailable,
)
from vault.key_inventory import RecentCounts, code_epochs, describe_keys, record_counts
from vault.keyring import DataKeyring, KeyPurpose, KeyState
from vault.storage.database import as_utc
from vault.storage.schema import data_keys, key_approvals, key_ceremonies


class KeyRotation(RotationBatches):
    """Proposals, approvals and the resumable jobs that carry rotations out."""

    def __init__(
        self,
        engine: Engine,
        provider: HSMProvider,
        keyring: DataKeyring,
        policy: Callable[[], PolicyEngine],
        *,
        audit: AuditLog | None = None,
        proposal_ttl: timedelta = timedelta(hours=24),
        destroy_grace: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cryptoperiods: Callable[[], list[dict[str, Any]]] | None = None,
        unsigned_officers_count: bool = False,
        authorities: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self._engine = engine
        # Tests' in-process callers only: count the actions of officers with no MFA key
        # registered without a signed proof (`vault._ceremony_guards.unproven`).
        self._unsigned = unsigned_officers_count
        self._authorities = authorities  # the vault's own names, as `vault.officer_mfa`'s
        # The keys in use against their cryptoperiods (`vault.cryptoperiod`), listed in
        # the inventory officers and evidence bundles see.
        self._cryptoperiods = cryptoperiods
        # Reads (status, inventory, what to do next) never queue behind the rotation's own
        # write batches on SQLite.
        self._reader = engine.execution_options(**READ_ONLY)
        self._provider = provider
        self._hierarchy = KeyHierarchy(provider)
        self._keyring = keyring
        self._policy = policy
        self._audit = audit or AuditLog()
        self._ttl = proposal_ttl
        self._grace = destroy_grace
        self._clock, self._lock = clock, threading.Lock()
        self._counts = RecentCounts(self._read)  # an officer's inventory reads' (atk49n)
        registry, unsigned = keyring.registry, unsigned_officers_count  # signed: sessions 39, 40
        registry.trust_officers(policy, authorities, insecure_unsigned_ceremonies=unsigned)

    # ------------------------------------------------------------------ helpers
    # Every database call of a ceremony goes through these two, so a database outage
    # leaves this package as `StorageUnavailable` (503), never as a driver error.
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with (
            database_errors_as(StorageUnavailable, "the key store"),
            self._engine.begin() as connection,
        ):
            yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with database_errors_as(StorageUnavailable, "the key store"), self._reader.connect() as c:
            yield c

    def _officer(self, identity: str, request_id: str) -> None:
        try:
            self._policy().authorize(identity, Action.KEY_ADMIN)
        except PolicyDenied:
            self._record(identity, request_id, "key.admin", Outcome.DENIED, None, {})
            raise

    def _custodian(self, who: str, request_id: str | None, action: str, key: str | None) -> None:
        """Refuse `action` by an officer with no custody acknowledgement (`vault._custody_gate`)."""
        with self._read() as connection:
            refusal = custody_refusal(connection, self._policy(), who, self._unsigned, key)
        if refusal is not None:
            self._record(who, request_id, action, Outcome.DENIED, key, {"reason": refusal.reason})
            raise refusal

    def _record(  # noqa: PLR0917 - mirrors the audit entry's fields, in order
        self,
        actor: str,
        request_id: str | None,
        action: str,
        outcome: Outcome,
        key_id: str | None,
        details: dict[str, DetailValue],
        connection: Connection | None = None,
        proof: str | None = None,
    ) -> None:
        # A counted proposal's or approval's signed request is the entry's document, whole
        # (a detail would be cut at 512 characters): the offline verifier re-checks it.
        event = AuditEvent(
            action=action,
            outcome=outcome,
            actor=actor,
            request_id=request_id,
            key_id=key_id,
            details=details,
            document=proof,
        )
        if connection is not None:
            self._audit.append(connection, event)
            return
        with self._write() as own:
            self._audit.append(own, event)

    def _needed(self) -> int:
        return self._policy().policy.key_approvals_required - 1

    def _load(self, connection: Connection, ceremony_id: str) -> Row[Any]:
        row = connection.execute(
            select(key_ceremonies).where(key_ceremonies.c.id == ceremony_id)
        ).first()
        if row is None:
            raise CeremonyNotFound("no such key ceremony")  # the id is the caller's text
        return row

    def _view(
        self, connection: Connection, row: Row[Any], revoked: Callable[[str], bool] | None = None
    ) -> Ceremony:
        return ceremony_view(
            connection,
            row,
            policy=self._policy(),
            now=self._clock(),
            ttl=self._ttl,
            needed=self._needed(),
            unsigned=self._unsigned,
            authorities=None if self._authorities is None else self._authorities(),
            revoked=revoked,
        )

    # ------------------------------------------------------------------ ceremony
    def propose(
        self,
        identity: str,
        kind: str,
        request_id: str | None = None,
        *,
        keyid: str | None = None,
        proof: SignedAction | None = None,
        certificate: str | None = None,  # the client certificate (PEM) it came with
    ) -> Ceremony:
        """Open a rotation proposal (`keyid`, `proof`: the MFA key that signed it, and the
        signed request, `vault.approval_proof`: the id derives from it). Raises
        `PolicyDenied` for a non-officer, `CeremonyError` for an unknown kind or while
        another rotation of it is open."""
        self._officer(identity, request_id or "")
        self._custodian(identity, request_id, "key.rotation.propose", None)
        try:
            rotation = RotationKind(kind)
        except ValueError:
            raise CeremonyError("kind must be data, kek, fingerprint, audit or register") from None
        now = self._clock()
        ceremony_id = str(uuid.uuid4()) if proof is None else proof.ceremony_id()
        proven = None if proof is None else proof.to_json()
        with self._write() as connection:
            hold_ceremony_lock(connection)
            open_states = [CeremonyState.PENDING.value, CeremonyState.RUNNING.value]
            for row in connection.execute(
                select(key_ceremonies).where(
                    key_ceremonies.c.kind == rotation.value, key_ceremonies.c.state.in_(open_states)
                )
            ):
                if self._view(connection, row).state != CeremonyState.EXPIRED:
                    raise CeremonyError(f"a {rotation.value} rotation is already open: {row.id}")
            connection.execute(
                insert(key_ceremonies).values(
                    id=ceremony_id,
                    kind=rotation.value,
                    state=CeremonyState.PENDING.value,
                    proposer=identity,
                    proposer_keyid=keyid,
                    proposer_proof=proven,
                    proposer_certificate=certificate,
                    created_at=now,
                    expires_at=now + self._ttl,
                )
            )
            self._record(
                identity,
                request_id,
                "key.rotation.propose",
                Outcome.SUCCESS,
                ceremony_id,
                {"kind": rotation.value, "approvals_needed": self._needed(), "keyid": keyid},
                connection,
                proven,
            )
            return self._view(connection, self._load(connection, ceremony_id))

    def approve(
        self,
        identity: str,
        ceremony_id: str,
        request_id: str | None = None,
        *,
        keyid: str | None = None,
        proof: SignedAction | None = None,
        certificate: OfficerCertificate | None = None,
    ) -> Ceremony:
        """Approve as `identity` (`keyid`, `proof`: the MFA key that signed it and the
        signed request). The proposer cannot approve; a second approval by the same
        officer changes nothing. At quorum of proven actions the rotation starts."""
        self._officer(identity, request_id or "")
        self._custodian(identity, request_id, "key.rotation.approve", ceremony_id)
        proven = None if proof is None else proof.to_json()
        keys = ApprovalKeys(identity, ceremony_id, request_id, keyid, proven, certificate)
        try:
            return self._approve(identity, ceremony_id, request_id, keys)
        except CeremonyRefused as refused:
            # Recorded in a transaction of its own: the refused approval's transaction
            # rolls back, and the denial must not go with it.
            details: dict[str, DetailValue] = {"reason": refused.reason}
            self._record(
                identity, request_id, "key.rotation.approve", Outcome.DENIED, ceremony_id, details
            )
            raise
        except BaseException:
            registry = self._keyring.registry
            discard_unrecorded(registry, self._provider, keys, self._engine, self._audit)
            raise

    def _approve(
        self, identity: str, ceremony_id: str, request_id: str | None, keys: ApprovalKeys
    ) -> Ceremony:
        with self._write() as connection:
            hold_ceremony_lock(connection)
            row = self._load(connection, ceremony_id)
            view = self._view(connection, row)
            if view.state != CeremonyState.PENDING:  # audited: a replay's one trace
                refusal = f"ceremony {ceremony_id} is {view.state}, not pending"
                raise CeremonyRefused(refusal, reason=f"the ceremony is {view.state}")
            if identity == row.proposer:
                refusal = "the proposer cannot approve their own request"
                raise CeremonyRefused(refusal, reason="the proposer cannot approve")
            own = None if self._authorities is None else self._authorities()
            standing = standing_approvals(
                connection,
                self._policy(),
                row,
                keys,
                unsigned=self._unsigned,
                authorities=own,
                signed_within=proposal_life(self._clock(), self._ttl),
            )
            if standing is None:
                return view  # approving twice does not count twice
            connection.execute(
                insert(key_approvals).values(
                    ceremony_id=ceremony_id,
                    officer=identity,
                    approved_at=self._clock(),
                    keyid=keys.keyid,
                    proof=keys.proof,
                    certificate=keys.certificate and keys.certificate.pem,
                )
            )
            self._record(
                identity,
                request_id,
                "key.rotation.approve",
                Outcome.SUCCESS,
                ceremony_id,
                {"approvals": len(standing) + 1, "keyid": keys.keyid},
                connection,
                keys.proof,
            )
            if len(standing) + 1 >= self._needed():
                self._start(connection, row, identity, keys.labels)
            view = self._view(connection, self._load(connection, ceremony_id))
            keys.before_commit(connection)  # last: a failure from here may be its COMMIT's
            return view

    def cancel(self, identity: str, ceremony_id: str, request_id: str | None = None) -> Ceremony:
        """Cancel pending ceremony `ceremony_id` as `identity`. One that is not pending is
        refused (`CeremonyRefused`) and the denial recorded, as an approval of it is."""
        self._officer(identity, request_id or "")
        try:
            return self._cancel(identity, ceremony_id, request_id)
        except CeremonyRefused as refused:
            # In a transaction of its own, as `approve`'s: the officer cancelling the
            # replayed ceremony the vault shows expired leaves this trace (review 27).
            details: dict[str, DetailValue] = {"reason": refused.reason}
            self._record(
                identity, request_id, "key.rotation.cancel", Outcome.DENIED, ceremony_id, details
            )
            raise

    def _cancel(self, identity: str, ceremony_id: str, request_id: str | None) -> Ceremony:
        with self._write() as connection:
            hold_ceremony_lock(connection)
            view = self._view(connection, self._load(connection, ceremony_id))
            if view.state != CeremonyState.PENDING:  # audited, as an approval's
                refusal = f"ceremony {ceremony_id} is {view.state}: too late to cancel"
                raise CeremonyRefused(refusal, reason=f"the ceremony is {view.state}")
            connection.execute(
                update(key_ceremonies)
                .where(key_ceremonies.c.id == ceremony_id)
                .values(state=CeremonyState.CANCELLED.value)
            )
            self._record(  # the proposal's mark, looked for by a start (session 31)
                identity, request_id, "key.rotation.cancel", Outcome.SUCCESS, ceremony_id,
                proposal_mark(self._load(connection, ceremony_id)), connection,
            )  # fmt: skip
            return self._view(connection, self._load(connection, ceremony_id))

    def status(
        self,
        identity: str,
        ceremony_id: str,
        revoked: Callable[[str], bool] | None = None,
        request_id: str = "",
    ) -> Ceremony:
        """Ceremony `ceremony_id` as officer `identity` sees it; with `revoked` (the CRL in
        force), a pending one counts no approval while an officer who acted in it is
        revoked, as approving it is refused then."""
        self._officer(identity, request_id)
        with self._read() as connection:
            return self._view(connection, self._load(connection, ceremony_id), revoked)

    def list_ceremonies(
        self, identity: str, revoked: Callable[[str], bool] | None = None, request_id: str = ""
    ) -> list[Ceremony]:
        self._officer(identity, request_id)
        return self.ceremonies(revoked)

    def ceremonies(self, revoked: Callable[[str], bool] | None = None) -> list[Ceremony]:
        """Every ceremony (for evidence bundles; callers authorise)."""
        with self._read() as connection:
            rows = connection.execute(
                select(key_ceremonies).order_by(key_ceremonies.c.created_at)
            ).all()
            return [self._view(connection, row, revoked) for row in rows]

    def inventory(self, identity: str, request_id: str = "") -> dict[str, Any]:
        """Keys on the token and data keys in the database, with how many records each
        data key still protects (`RecentCounts`). Never key material. A denial's entry
        carries `request_id`, as every other entry of an API request does."""
        self._officer(identity, request_id)
        return self.key_inventory(recent=True)

    def key_inventory(self, *, recent: bool = False) -> dict[str, Any]:
        """The inventory without an authorisation check (evidence: counted now)."""
        counts = self._counts.recent() if recent else None  # before a connection is held
        with self._read() as connection:
            data_counts, fp_counts = counts or record_counts(connection)
            epochs = code_epochs(connection, self._clock())
        inventory = describe_keys(data_counts, fp_counts, self._keyring, self._provider)
        inventory["security_code_epochs"] = epochs
        if self._cryptoperiods is not None:
            try:
                inventory["cryptoperiods"] = self._cryptoperiods()
            except KeyNotRegistered as exc:  # a substitute: listed, so a bundle shows it
                inventory["cryptoperiods"] = {"error": exc.code, "detail": str(exc)}
        return inventory

    # ------------------------------------------------------------------ execution
    def _start(
        self, connection: Connection, row: Row[Any], approver: str, created: list[str]
    ) -> None:
        """Start approved ceremony `row` in `connection`'s transaction; each token key it
        makes is added to `created` (destroyed if the transaction fails)."""
        kind = RotationKind(row.kind)
        mark = refuse_a_second_run(connection, kind, row)  # the start record's mark
        refuse_late_custody(connection, self._policy(), row, unsigned=self._unsigned)
        registry = self._keyring.registry
        if kind is RotationKind.AUDIT:  # one step, with a handover: its own module
            audit_key = AuditKeyRotation(self._provider, registry, self._audit, self._clock)
            return audit_key.rotate(connection, row, approver, created)
        if kind is RotationKind.REGISTER:  # no key made: `vault._signed_registration`
            args = (registry, self._provider, self._audit, self._clock())
            return start_registration(connection, row, approver, mark, *args)
        made: str | None = None  # the token key this ceremony makes, registered below
        if kind is RotationKind.DATA:
            old, new = self._new_data_keys(connection)
        else:
            key_kind = KeyKind.KEK if kind is RotationKind.KEK else KeyKind.FINGERPRINT
            old = registry.versions(key_kind)[-1]
            new = old + 1
            label = key_label(key_kind, new)
            if self._provider.has_key(label):
                # Not created by this ceremony (a key planted under the next label, or
                # a start whose transaction was lost): never adopted silently.
                raise CeremonyError(
                    f"a key labelled {label!r} is already on the token and not in the key "
                    "registry: investigate and destroy it, then approve again"
                )
            self._hierarchy.create(key_kind, new)
            created.append(made := label)
        total = self._rows_to_move(connection, kind, old)
        connection.execute(
            update(key_ceremonies)
            .where(key_ceremonies.c.id == row.id)
            .values(
                state=CeremonyState.RUNNING.value,
                old_version=old,
                new_version=new,
                progress_total=total,
            )
        )
        # The officers' signed requests on the registration and the start: the registry
        # and a data completion count only these (session 40: a PIN holder forged both).
        document = ceremony_document(connection, row)
        if made is not None:
            # Next to the start, which takes its time (`AuditLog.append`'s hold): written
            # before the count above (seconds on a large vault), it let another node's
            # entries into the log between the two, dated after the start (review 37).
            how = f"created by key ceremony {row.id}"
            registry.register(
                connection, made, actor=approver, how=how, ceremony=row.id, document=document
            )
        self._record(
            approver, None, "key.rotation.start", Outcome.SUCCESS, row.id,
            {"kind": kind.value, "old_version": old, "new_version": new, "records": total, **mark},
            connection, document,
        )  # fmt: skip

    def run_pending(self, batch: int = BATCH) -> int:
        """Advance every running rotation by one batch (and destroy old keys whose grace
        period ended). Returns the rows moved. Safe to call from several nodes at once:
        each batch re-selects what is left inside its own transaction."""
        with self._lock:
            with self._read() as connection:
                running = connection.execute(
                    select(key_ceremonies).where(
                        key_ceremonies.c.state.in_(
                            [CeremonyState.RUNNING.value, CeremonyState.DESTROY_PENDING.value]
                        )
                    )
                ).all()
                destroyed = [
                    (KeyPurpose(purpose), int(version))
                    for purpose, version in connection.execute(
                        select(data_keys.c.purpose, data_keys.c.version).where(
                            data_keys.c.state == KeyState.DESTROYED.value
                        )
                    )
                ]
                retired = retired_through(connection, self._keyring.registry.signed_time)
            # A data key another process destroyed leaves this one's memory too.
            self._keyring.forget_destroyed(destroyed)
            self._keyring.learn_retired(retired)
            return self._advance_each(running, batch)

    def _step(self, row: Row[Any], batch: int) -> int:
        kind = RotationKind(row.kind)
        with self._write() as connection:
            if kind is RotationKind.DATA:
                moved = self._reencrypt(connection, row, batch)
            elif kind is RotationKind.KEK:
                moved = self._rewrap(connection, row, batch)
            else:
                moved = self._refingerprint(connection, row, batch)
            if moved:
                connection.execute(
                    update(key_ceremonies)
                    .where(key_ceremonies.c.id == row.id)
                    .values(progress_done=key_ceremonies.c.progress_done + moved)
                )
                self._progress(connection, row, {"moved": moved})
                return moved
            self._finish_unless_unreadable(connection, row)
            return 0

    def _progress(
        self, connection: Connection, row: Row[Any], details: dict[str, DetailValue]
    ) -> None:
        self._record(
            "cofre rotation", None, "key.rotation.progress", Outcome.SUCCESS, row.id, details,
            connection,
        )  # fmt: skip

    def _finish(self, connection: Connection, row: Row[Any]) -> None:
        kind = RotationKind(row.kind)
        now = self._clock()
        if kind is RotationKind.DATA:
            connection.execute(
                update(data_keys)
                .where(data_keys.c.state == KeyState.RETIRING.value)
                .values(state=KeyState.DESTROYED.value, wrapped=b"", retired_at=now)
            )
            self._keyring.forget_retired(int(row.old_version))
            connection.execute(
                update(key_ceremonies)
                .where(key_ceremonies.c.id == row.id)
                .values(state=CeremonyState.COMPLETED.value, completed_at=now)
            )
            self._record(
                "cofre rotation",
                None,
                "key.rotation.complete",
                Outcome.SUCCESS,
                row.id,
                {"kind": "data", "retired_version": int(row.old_version)},
                connection,
            )
            return
        connection.execute(
            update(key_ceremonies)
            .where(key_ceremonies.c.id == row.id)
            .values(state=CeremonyState.DESTROY_PENDING.value, destroy_after=now + self._grace)
        )
        self._record(
            "cofre rotation", None, "key.rotation.migrated", Outcome.SUCCESS, row.id,
            {"destroy_after": (now + self._grace).isoformat()}, connection,
        )  # fmt: skip

    def _destroy_if_due(self, row: Row[Any]) -> None:
        due = as_utc(row.destroy_after)
        if due is None or due > self._clock() or self._earlier_waits(row):
            return
        key_kind = KeyKind.KEK if row.kind == RotationKind.KEK.value else KeyKind.FINGERPRINT
        label = key_label(key_kind, int(row.old_version))
        # The late rows' moves commit before the destroy, which no rollback undoes: in
        # one transaction a failure after it left them under a key gone (the ceremony review).
        with self._write() as connection:
            if moved := self._move_late_rows(connection, row):
                self._progress(connection, row, {"moved": moved, "late": True})
        # Fail closed: the entry, then the destroy, in the transaction marking it done (a
        # failed commit after it leaves the ceremony pending: the next pass records it).
        with self._write() as connection:
            done = connection.execute(  # once: every node's worker may get here
                update(key_ceremonies)
                .where(key_ceremonies.c.id == row.id, key_ceremonies.c.state == row.state)
                .values(state=CeremonyState.COMPLETED.value, completed_at=self._clock())
            )
            if done.rowcount != 1:
                return
            self._record(
                "cofre rotation",
                None,
                "key.destroy",
                Outcome.SUCCESS,
                label,
                {"ceremony": row.id},
                connection,
            )
            if self._provider.has_key(label):
                self._provider.destroy_key(label)
