"""The batches that carry a running rotation out: re-encrypt stored PANs under the new
data key, re-wrap the data keys under the new KEK, fingerprint stored cards again under
the new fingerprint key.

IN PCI SCOPE, holds keys and card data (a batch decrypts the PANs it moves). A part of
`vault.rotation.KeyRotation`, kept in a module of its own so that each reads in one
sitting.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, bindparam, func, select, update

from cofre.dberrors import database_errors_as
from cofre.errors import CofreError
from hsm.errors import HSMKeyNotFound
from hsm.keys import KeyKind, key_label
from hsm.provider import HSMProvider, WrappedKey
from vault._retired_keys import retired_through
from vault._rotation_unreadable import UnreadableRows, rows_among
from vault.card import pan_digits
from vault.ceremony import CeremonyState, RotationKind
from vault.errors import DataKeyMissing, StorageUnavailable
from vault.keyring import DataKeyring, KeyPurpose, KeyState, open_pan
from vault.storage.schema import data_keys, key_ceremonies, tokens

BATCH: Final = 500  # rows a rotation moves per transaction

# One statement for a whole batch (executemany); the key_version guard makes a row that
# another worker already moved a no-op.
_REENCRYPT: Final = (
    update(tokens)
    .where(tokens.c.id == bindparam("row_id"), tokens.c.key_version == bindparam("old"))
    .values(
        key_version=bindparam("new"), nonce=bindparam("new_nonce"), ciphertext=bindparam("sealed")
    )
)


# What opening a stored PAN reads (`open_pan`).
_SEALED: Final = (tokens.c.id, tokens.c.token, tokens.c.domain, tokens.c.nonce, tokens.c.ciphertext)


class RotationBatches(UnreadableRows):
    """One batch of each rotation kind; `KeyRotation` sets the state these use."""

    _engine: Engine
    _provider: HSMProvider
    _keyring: DataKeyring

    def _step(self, row: Row[Any], batch: int) -> int:
        raise NotImplementedError  # `KeyRotation`'s

    def _destroy_if_due(self, row: Row[Any]) -> None:
        raise NotImplementedError  # `KeyRotation`'s

    def _advance_each(self, rows: Sequence[Row[Any]], batch: int) -> int:
        """One batch of each running rotation of `rows`, and the destruction of each
        waiting one's old key once due; the rows moved. A rotation that fails (its new
        key lost from the token, the HSM or the database away) is raised only once the
        others had their turn: the first to fail stopped the pass, and every rotation
        listed after it stopped advancing with it (atk49o)."""
        moved, failed = 0, None
        for row in rows:
            try:
                if row.state == CeremonyState.DESTROY_PENDING.value:
                    self._destroy_if_due(row)
                else:
                    moved += self._step(row, batch)
            except CofreError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return moved

    def _earlier_waits(self, row: Row[Any]) -> bool:
        """Whether a rotation of `row`'s kind whose new key is `row`'s old one still waits
        to destroy its own old key. Its last step moves its late rows onto that key, which
        it first checks is on the token: destroyed by `row` before (its grace shorter, the
        setting lowered between the two), the earlier rotation kept its retired key for
        good, failing every pass of the worker and stopping the rotations after it
        (atk49o). So `row` keeps its old key until the earlier one is done, within the
        earlier one's grace."""
        earlier = select(key_ceremonies.c.id).where(
            key_ceremonies.c.kind == row.kind,
            key_ceremonies.c.state == CeremonyState.DESTROY_PENDING.value,
            key_ceremonies.c.new_version == row.old_version,
            key_ceremonies.c.id != row.id,
        )
        with (
            database_errors_as(StorageUnavailable, "the key store"),
            self._engine.connect() as connection,
        ):
            return connection.execute(earlier).first() is not None

    @staticmethod
    def _rows_to_move(connection: Connection, kind: RotationKind, old: int) -> int:
        """What a rotation of `kind` off version `old` moves, counted as it starts: the
        PANs under the old data key, the data keys not destroyed (re-wrapped under the
        new KEK), or the stored fingerprints under the old fingerprint key."""
        if kind is RotationKind.DATA:
            query = select(func.count()).select_from(tokens).where(tokens.c.key_version == old)
        elif kind is RotationKind.KEK:
            query = (
                select(func.count())
                .select_from(data_keys)
                .where(data_keys.c.state != KeyState.DESTROYED.value)
            )
        else:
            query = (
                select(func.count())
                .select_from(tokens)
                .where(tokens.c.fp_version == old, tokens.c.fingerprint.is_not(None))
            )
        return int(connection.execute(query).scalar_one())

    def _new_data_keys(self, connection: Connection) -> tuple[int, int]:
        """Start a data rotation: a new version of each data key, the active ones
        retiring. Returns the old and new versions (old 0 on a vault that has created
        no data key yet: it creates them at its first call, and this makes version 1)."""
        kek = self._keyring.registry.current_label(KeyKind.KEK)
        newest = connection.execute(
            select(func.max(data_keys.c.version)).where(
                data_keys.c.purpose == KeyPurpose.PAN_GCM.value
            )
        ).scalar_one()
        old = 0 if newest is None else int(newest)
        new = old + 1
        for purpose in KeyPurpose:
            connection.execute(
                update(data_keys)
                .where(
                    data_keys.c.purpose == purpose.value, data_keys.c.state == KeyState.ACTIVE.value
                )
                .values(state=KeyState.RETIRING.value)
            )
            self._keyring.create_version(connection, purpose, new, kek)
        self._keyring.refresh()
        return old, new

    def _reencrypt(self, connection: Connection, row: Row[Any], batch: int) -> int:
        old, new = int(row.old_version), int(row.new_version)
        under_old = select(*_SEALED).where(tokens.c.key_version == old)
        while True:  # a batch of unreadable rows only: the next one (they are skipped)
            rows = self._unskipped(connection, row, under_old, batch)
            if not rows:  # done; and a rotation from no data key (v0) has no cipher to ask for
                return 0
            if moved := self._reseal(connection, row, rows, old, new):
                return moved

    def _reseal(
        self, connection: Connection, row: Row[Any], rows: Sequence[Any], old: int, new: int
    ) -> int:
        """Re-encrypt `rows` under data key `new`; one that fails authentication is
        skipped (`UnreadableRows`), never resealed. Returns the rows moved."""
        old_cipher, new_cipher = self._keyring.gcm(old), self._keyring.gcm(new)
        params = []
        for item in rows:
            clear = self._open_or_skip(row, item, lambda i=item: open_pan(old_cipher, i, old))
            if clear is None:
                continue
            nonce = secrets.token_bytes(12)
            sealed = new_cipher.encrypt(
                nonce, clear, self._keyring.sealing_aad(item.id, item.token, new, item.domain)
            )
            params.append(
                {"row_id": item.id, "old": old, "new": new, "new_nonce": nonce, "sealed": sealed}
            )
        if params:
            connection.execute(_REENCRYPT, params)
        return len(params)

    def _rewrap(
        self, connection: Connection, row: Row[Any], batch: int, *, late: bool = False
    ) -> int:
        new_label = key_label(KeyKind.KEK, int(row.new_version))
        # The last step (`late`) moves only what lies under the KEK it destroys: a later
        # rotation's new KEK is not this one's to move back from (atk49o: the data keys
        # went back under this rotation's new KEK, retiring by then, until the later
        # rotation's own last step moved them again).
        under = (
            data_keys.c.kek_label == key_label(KeyKind.KEK, int(row.old_version))
            if late
            else data_keys.c.kek_label != new_label
        )
        rows = connection.execute(
            select(data_keys)
            .where(under, data_keys.c.state != KeyState.DESTROYED.value)
            .limit(batch)
        ).all()
        # Only from a KEK the registry records, as the keyring unwraps (review 38): the
        # row's label is the database's word, and a data key a holder of the PIN wrapped
        # under a KEK of their own came out under the genuine new one, which the keyring
        # then opened like any other (the attack review). Such a row stops the rotation
        # (readiness names the unregistered KEK); nothing is re-wrapped from it.
        registered = {
            key_label(KeyKind.KEK, v) for v in self._keyring.registry.versions(KeyKind.KEK)
        }
        retired = retired_through(connection, self._keyring.registry.signed_time)
        for item in rows:
            if item.version <= retired:
                # Its wrapped bytes put back from a backup (session 38): never carried
                # under the new KEK, which would outlive the old KEK's destruction.
                connection.execute(
                    update(data_keys)
                    .where(data_keys.c.purpose == item.purpose, data_keys.c.version == item.version)
                    .values(state=KeyState.DESTROYED.value, wrapped=b"")
                )
                continue
            if item.kek_label not in registered:
                raise DataKeyMissing(
                    f"data key {item.purpose} v{item.version} is wrapped under "
                    f"{item.kek_label!r}, which is not a registered KEK on the token: "
                    "not re-wrapped"
                )
            moved = self._provider.rewrap_key(
                WrappedKey(bytes(item.wrapped), item.wrap_mechanism, item.kek_label), new_label
            )
            connection.execute(
                update(data_keys)
                .where(data_keys.c.purpose == item.purpose, data_keys.c.version == item.version)
                .values(
                    wrapped=moved.wrapped, wrap_mechanism=moved.algorithm, kek_label=moved.kek_label
                )
            )
        return len(rows)

    def _refingerprint(self, connection: Connection, row: Row[Any], batch: int) -> int:
        old = int(row.old_version)
        under_old = select(tokens).where(
            tokens.c.fp_version == old, tokens.c.fingerprint.is_not(None)
        )
        while True:  # a batch of unreadable rows only: the next one (they are skipped)
            rows = self._unskipped(connection, row, under_old, batch)
            if not rows:
                return 0
            if moved := self._fingerprint_again(connection, row, rows):
                return moved

    def _fingerprint_again(self, connection: Connection, row: Row[Any], rows: Sequence[Any]) -> int:
        """Fingerprint `rows` under the new key; one whose card fails authentication is
        skipped (`UnreadableRows`), never fingerprinted. Returns the rows moved."""
        old, new = int(row.old_version), int(row.new_version)
        label = key_label(KeyKind.FINGERPRINT, new)
        moved = 0
        for item in rows:
            version = int(item.key_version)
            clear = self._open_or_skip(
                row, item, lambda i=item, v=version: open_pan(self._keyring.gcm(v), i, v)
            )
            if clear is None:
                continue
            # Only over the fingerprint read (PostgreSQL re-checks it on the row a write
            # that held the row left): a delete shreds the row's fingerprint with its
            # card, and written by the id alone the new one came back on the tombstone,
            # the card's convergent token for good (session 31).
            connection.execute(
                update(tokens)
                .where(
                    tokens.c.id == item.id,
                    tokens.c.fp_version == old,
                    tokens.c.fingerprint == item.fingerprint,
                )
                .values(
                    fingerprint=self._provider.hmac_sha256(label, pan_digits(clear)),
                    fp_version=new,
                )
            )
            moved += 1
        return moved

    def _finish_unless_unreadable(self, connection: Connection, row: Row[Any]) -> None:
        """`_finish` rotation `row`, nothing else left under its old version, unless a
        row it could not read still is (rot38): those are opened once more (moved if
        restored), the rest audited once each, and the rotation does not complete (the
        old key kept); its status names them (`unreadable_tokens`)."""
        if row.kind in {RotationKind.DATA.value, RotationKind.FINGERPRINT.value}:
            held = self._skipped(connection, row)
            picked = (*_SEALED, tokens.c.key_version, tokens.c.fingerprint)
            kind_data = row.kind == RotationKind.DATA.value
            under_old = (
                tokens.c.key_version == int(row.old_version)
                if kind_data
                else (tokens.c.fp_version == int(row.old_version))
                & tokens.c.fingerprint.is_not(None)
            )
            rows = rows_among(connection, select(*picked).where(under_old), held)
            self._suspects(row.id).clear()
            if rows:
                old, new = int(row.old_version), int(row.new_version)
                moved = (
                    self._reseal(connection, row, rows, old, new)
                    if kind_data
                    else self._fingerprint_again(connection, row, rows)
                )
                still = sorted(self._suspects(row.id))
                self._report(connection, row, still)
                if moved:
                    self._count_moved(connection, row, moved)
                if still or moved:
                    return
        self._held_back().pop(row.id, None)
        self._finish(connection, row)

    def _count_moved(self, connection: Connection, row: Row[Any], moved: int) -> None:
        connection.execute(
            update(key_ceremonies)
            .where(key_ceremonies.c.id == row.id)
            .values(progress_done=key_ceremonies.c.progress_done + moved)
        )

    def _finish(self, connection: Connection, row: Row[Any]) -> None:
        raise NotImplementedError  # `KeyRotation._finish`

    def _move_late_rows(self, connection: Connection, row: Row[Any]) -> int:
        """Move again what was written under the old key after the migration passed,
        before it is destroyed. A tokenize fingerprints its card before its transaction,
        under the versions its node listed up to a few seconds earlier, so one begun
        before the rotation can commit under the old version after the last batch moved;
        without this it would keep a fingerprint no key computes any more (its card never
        converging again, a lookup missing it). A data key can be wrapped under the old
        KEK the same way (a data rotation approved on a node whose registry still named
        it current): destroyed, it took every token under that data key (review 38's
        backstop). The grace period is far longer than any call: by now all are in.
        Returns the rows moved. Raises `HSMKeyNotFound`, before anything is moved or
        destroyed, when the rotation's new key is not on the token (session 40): the
        vault then serves with the old one, and destroying it left no key of the kind."""
        kek = row.kind == RotationKind.KEK.value
        kind = KeyKind.KEK if kek else KeyKind.FINGERPRINT
        new = key_label(kind, int(row.new_version))
        if not self._provider.has_key(new):
            old = key_label(kind, int(row.old_version))
            raise HSMKeyNotFound(
                f"{new}, the new key of key ceremony {row.id}, is not on the token: {old} is "
                "kept until it is restored from the HSM's backup (docs/key-ceremony.md, "
                '"A key missing from the token")'
            )
        step = functools.partial(self._rewrap, late=True) if kek else self._refingerprint
        moved = 0
        while batch := step(connection, row, BATCH):
            moved += batch
        if late_unreadable := sorted(self._suspects(row.id)):
            # A late row that fails authentication keeps its old fingerprint (its card
            # stays readable under its data key); audited once, it holds nothing back.
            self._report(connection, row, late_unreadable)
            self._held_back().pop(row.id, None)
        return moved
