"""The client-certificate revocation list: loaded into the live TLS context when its file
changes (polled) or on SIGHUP, and checked for expiry by readiness.

IN PCI SCOPE. OpenSSL refuses new handshakes once the only CRL it holds of a CA is
past its ``nextUpdate`` (CRL checking fails closed), which looked from outside like an
outage with no reason given. Here the reason is named: `/readyz` fails with
``crl_expired`` and the log says which CRL expired when. A CRL added to a context
cannot be taken out again, and OpenSSL picks the best-scored CRL of an issuer, not the
newest: with an older one still in date in its store it falls back to that one. So the
request guard refuses every request of a CA whose CRL in force has expired (503
``crl_expired``, `RevokedCertificates.check`), whatever OpenSSL fell back to; delta
CRLs are kept out of both (session 31).

The context is consulted only at the handshake, and a pooled keep-alive connection lives
for hours: a certificate revoked after its connection opened would keep working on it.
So each reload also swaps the CRL's revoked (issuer, serial) pairs into a
`RevokedCertificates` that the request guard checks on every request (one set lookup;
the certificate's pair is parsed once per certificate and memoized), and the next
request on such a connection is refused 401 ``certificate_revoked`` and the connection
closed. That set is keyed on the issuer's name, as CRLs are, so a CRL is taken only
when a CA the context trusts signed it (two CAs can share a name; the dev CAs do).

The set must revoke at least what OpenSSL does, or a certificate refused at new
handshakes keeps working on open connections. So every CRL in the file is read (OpenSSL
loads them all: one per client CA during a CA rotation), and, like OpenSSL, an issuer's
CRL is never replaced by an older one, nor forgotten when a later file leaves it out.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from api.errors import CertificateRevoked, CrlExpired, CrlInvalid

_log = structlog.get_logger("cofre.api.crl")
_Stamp = tuple[int, int, int]
# An issuer's name by value: each RDN's (OID, value) pairs, whatever string types encode
# them. The DER bytes were the key before (review 31b): a CRL whose issuer name says the
# CA's subject in another string type is taken (`cryptography` compares names by value,
# OpenSSL by canonical form), and the per-request checks missed its certificates.
_Issuer = tuple[frozenset[tuple[str, str | bytes]], ...]
# A revoked certificate as a CRL names it: its issuer's name and its serial.
_Revoked = tuple[_Issuer, int]
# Whose CRL: the issuer's name and the DER public key of the trusted CA that signed it
# (two CAs can share a name; neither's CRL may displace the other's).
_Source = tuple[_Issuer, bytes]
# CRLs replaced before their `crl.load` entry was written that still wait for it
# (`CrlWatcher._left_unrecorded`): bounded, as the audit log may refuse writes for long
# while a CA publishes; past it each one is logged as never recorded.
MAX_UNRECORDED_CRLS = 16
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


@functools.lru_cache(maxsize=256)
def _issuer_and_serial(pem: str) -> _Revoked:
    # Memoized like `api.tls.identity_from_pem`: the same certificate on every request of
    # its connection, never parsed again.
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return (_issuer_key(cert.issuer), cert.serial_number)


def _issuer_key(name: x509.Name) -> _Issuer:
    """`name` by value, as `x509.Name` compares names (its string types left out)."""
    return tuple(frozenset((a.oid.dotted_string, a.value) for a in rdn) for rdn in name.rdns)


class RevokedCertificates:
    """The client certificates the loaded CRLs revoke, as the request guard sees them.
    `CrlWatcher` merges each reload's CRLs in and replaces the whole frozenset (one
    reference assignment, atomic for the event loop's readers); empty when no CRL is
    configured."""

    __slots__ = ("_by_source", "_earliest", "_expiry", "_pairs")

    def __init__(self) -> None:
        self._pairs: frozenset[_Revoked] = frozenset()
        # Per source, the newest CRL's lastUpdate, nextUpdate and revoked serials.
        self._by_source: dict[_Source, tuple[datetime, datetime | None, frozenset[int]]] = {}
        # Per issuer name, the nextUpdate of its CRL in force, and the earliest of them
        # as a timestamp (`check`'s fast path: no date is built before it passes).
        self._expiry: dict[_Issuer, datetime] = {}
        self._earliest = float("inf")

    def merge(self, crls: list[tuple[_Source, x509.CertificateRevocationList]]) -> None:
        """Take each CRL unless its source's loaded one is newer: OpenSSL prefers the
        newest CRL of an issuer and never forgets one. Two of the same lastUpdate are
        united (fail closed: which one OpenSSL picks is not ours to guess), their
        revocations and the earlier nextUpdate (review 31b: the one listed last was
        kept, and the other's expiry never checked)."""
        by_source = dict(self._by_source)
        for source, crl in crls:
            serials = frozenset(revoked.serial_number for revoked in crl)
            last = crl.last_update_utc
            loaded = by_source.get(source)
            if loaded is not None and loaded[0] > last:
                continue
            next_update = crl.next_update_utc
            if loaded is not None and loaded[0] == last:
                serials |= loaded[2]
                if loaded[1] is not None:
                    next_update = min(loaded[1], next_update or loaded[1])
            by_source[source] = (last, next_update, serials)
        self._by_source = by_source
        self._pairs = frozenset(
            (issuer, serial) for (issuer, _), (_, _, s) in by_source.items() for serial in s
        )
        expiry: dict[_Issuer, datetime] = {}
        for (issuer, _), (_, next_update, _) in by_source.items():
            if next_update is not None:
                expiry[issuer] = min(next_update, expiry.get(issuer, next_update))
        self._expiry = expiry
        self._earliest = min((n.timestamp() for n in expiry.values()), default=float("inf"))

    def next_update(self) -> datetime | None:
        """The earliest nextUpdate of the CRLs in force: past it, OpenSSL refuses the
        clients of that CA."""
        dates = [n for _, n, _ in self._by_source.values() if n is not None]
        return min(dates) if dates else None

    def revokes(self, pem: str) -> bool:
        """Whether the certificate `pem` is revoked (an officer's, stored with a key
        ceremony action: `vault._ceremony_guards.revoked_officers`)."""
        pairs = self._pairs
        return bool(pairs) and _issuer_and_serial(pem) in pairs

    def check(self, pem: str | None) -> None:
        """Raise `CertificateRevoked` when the certificate `pem` is revoked, and
        `CrlExpired` when its CA's CRL in force is past its nextUpdate.

        OpenSSL refuses the handshake itself then, unless an older CRL of that CA,
        loaded earlier and still before its own nextUpdate, is in its store: it falls
        back to that one (the best-scored CRL, not the newest), and the clients of an
        expired CRL were served again (found by tests/reliability/test_crl_faults.py)."""
        if pem is None:
            return
        pairs = self._pairs
        if pairs and _issuer_and_serial(pem) in pairs:
            raise CertificateRevoked("the client certificate has been revoked")
        if time.time() < self._earliest:
            return
        expiry = self._expiry.get(_issuer_and_serial(pem)[0])
        if expiry is not None and expiry <= datetime.now(UTC):
            raise CrlExpired(
                f"the CRL of this certificate's CA expired at {expiry.isoformat()}; "
                "every client certificate it issued is refused until a new one is installed"
            )


def _load_into(context: ssl.SSLContext, crls: list[x509.CertificateRevocationList]) -> None:
    """Load `crls` into `context` (through a temporary file: ``cadata`` takes no CRL)."""
    if not crls:
        return
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as out:
        out.write(b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls))
        out.flush()
        context.load_verify_locations(cafile=out.name)


def _is_delta(crl: x509.CertificateRevocationList) -> bool:
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        return False
    return True


def _load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in the PEM file `data`; `ValueError` for a file with none, a cut-off
    block, or anything but CRLs (OpenSSL would load a certificate there as a trust
    anchor)."""
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks or len(blocks) != data.count(b"-----BEGIN "):
        raise ValueError("not a complete PEM file")
    if any(m.group(1) != b"X509 CRL" for m in blocks):
        raise ValueError("a PEM block is not a CRL")
    return [x509.load_pem_x509_crl(m.group(0)) for m in blocks]


@dataclass(frozen=True)
class CrlFacts:
    """What identifies a CRL put in force (for its audit entry): its issuer, CRL number
    (None when it has none), thisUpdate and nextUpdate (ISO 8601, UTC), how many serials
    it revokes, and whether it is a delta CRL (loaded, never used: `reload`)."""

    issuer: str
    number: int | None
    this_update: str
    next_update: str | None
    revoked: int
    delta: bool


def _facts(crl: x509.CertificateRevocationList) -> CrlFacts:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlFacts(
        issuer=crl.issuer.rfc4514_string(),
        number=number,
        this_update=crl.last_update_utc.isoformat(),
        next_update=n.isoformat() if (n := crl.next_update_utc) else None,
        revoked=len(crl),
        delta=_is_delta(crl),
    )


class CrlWatcher:
    """Keeps `context`'s CRL, and `revoked` (for connections already open), in step
    with the file at `path`. With `record_changes`, each CRL put in force that this
    process has not recorded yet is handed to the recorder once (the audit entry, PCI
    DSS 10.2.1.5): not at every poll, not again when the same CRL is loaded again."""

    def __init__(
        self,
        path: Path,
        context: ssl.SSLContext,
        revoked: RevokedCertificates | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self._context = context
        self.revoked = revoked if revoked is not None else RevokedCertificates()
        self._clock = clock
        self._stamp: _Stamp | None = None
        self._next_update: datetime | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_force: frozenset[CrlFacts] = frozenset()
        self._recorded: set[CrlFacts] = set()
        # CRLs that were in force and left it before their entry was written, oldest
        # first: still recorded (their revocations were in force; session 33).
        self._left_unrecorded: dict[CrlFacts, None] = {}
        self._recorder: Callable[[CrlFacts], None] | None = None
        self._record_lock = threading.Lock()  # the poll thread and SIGHUP both record
        self._closed = False  # `stop`: nothing is recorded after it

    def _read_stamp(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> None:
        """Load the file into the context and `revoked` now (start-up, SIGHUP). A file
        that cannot be read or parsed is logged and keeps the CRL loaded before
        (readiness then fails with ``crl_invalid``)."""
        with self._lock:
            self._stamp = self._read_stamp()
            try:
                crls = _load_crls(self.path.read_bytes())
                sourced = [(self._trusted_source(crl), crl) for crl in crls]
                bases = [crl for crl in crls if not _is_delta(crl)]
                if len(bases) == len(crls):
                    self._context.load_verify_locations(cafile=str(self.path))
                else:
                    _load_into(self._context, bases)
            except (OSError, ValueError, ssl.SSLError, CrlInvalid) as exc:
                self._error = str(exc) if isinstance(exc, CrlInvalid) else type(exc).__name__
                _log.error("CRL not loaded", file=str(self.path), error=self._error)
                return
            # A delta CRL is not used (review 31b): merged as its issuer's newest it took
            # the base's revocations and expiry out of `check`, and in OpenSSL's store
            # (3.0, no X509_V_FLAG_USE_DELTAS) a newer delta beside its base let a
            # certificate the base revokes complete new handshakes.
            self.revoked.merge([(s, crl) for s, crl in sourced if not _is_delta(crl)])
            self._error = None
            self._next_update = self.revoked.next_update()
            left, self._in_force = self._in_force, frozenset(_facts(crl) for crl in crls)
            self._keep_unrecorded(left - self._in_force)
            for crl in crls:
                _log.info(
                    "CRL loaded",
                    file=str(self.path),
                    issuer=crl.issuer.rfc4514_string(),
                    revoked=len(crl),
                    delta=_is_delta(crl),
                    next_update=n.isoformat() if (n := crl.next_update_utc) else None,
                )
        self._record_pending()

    def record_changes(self, recorder: Callable[[CrlFacts], None]) -> None:
        """From now on hand each CRL put in force and not yet recorded to `recorder`,
        starting with those in force now. A recorder that raises is logged, and the CRL
        is handed to it again at the next poll (the CRL stays in force meanwhile:
        refusing a newer revocation list would keep revoked certificates working), even
        once a newer file has replaced it: its revocations were in force (session 33;
        at most `MAX_UNRECORDED_CRLS` wait so, oldest first, before those in force)."""
        self._recorder = recorder
        self._record_pending()

    def _keep_unrecorded(self, left: frozenset[CrlFacts]) -> None:
        """Keep the CRLs in `left` (no longer in force) that have no entry yet waiting for
        one, up to `MAX_UNRECORDED_CRLS`: the oldest are kept, each past it is logged."""
        with self._record_lock:
            for facts in sorted(left - self._recorded - self._left_unrecorded.keys(), key=repr):
                if len(self._left_unrecorded) < MAX_UNRECORDED_CRLS:
                    self._left_unrecorded[facts] = None
                    continue
                _never_recorded(facts, "too many waiting for an entry")

    def _record_pending(self) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        with self._record_lock:
            if self._closed:
                return
            waiting = list(self._left_unrecorded)
            waiting += sorted(
                self._in_force - self._recorded - self._left_unrecorded.keys(), key=repr
            )
            for facts in waiting:
                try:
                    recorder(facts)
                except Exception as exc:  # noqa: BLE001 - retried at the next poll
                    _log.error(
                        "CRL load not recorded in the audit log; retried at the next check",
                        issuer=facts.issuer,
                        error=getattr(exc, "code", type(exc).__name__),
                    )
                    return
                self._recorded.add(facts)
                self._left_unrecorded.pop(facts, None)

    def _trusted_source(self, crl: x509.CertificateRevocationList) -> _Source:
        """The source of `crl`: raise `CrlInvalid` unless a CA of the context signed it."""
        for der in self._context.get_ca_certs(binary_form=True):
            ca = x509.load_der_x509_certificate(der)
            if ca.subject != crl.issuer:
                continue
            try:
                if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                    key = ca.public_key().public_bytes(
                        serialization.Encoding.DER,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                    return (_issuer_key(crl.issuer), key)
            except TypeError:  # a key type CRLs cannot be signed with
                continue
        raise CrlInvalid("not signed by a trusted CA")

    def reload_if_changed(self) -> bool:
        """Reload when the file's modification time, size or inode changed; return
        whether it did."""
        if self._read_stamp() == self._stamp:
            return False
        self.reload()
        return True

    def check(self) -> None:
        """Readiness: raises `CrlExpired` when the loaded CRL is past its nextUpdate
        (every client is then refused) and `CrlInvalid` when the file could not be
        loaded; logs why."""
        if self._error is not None:
            raise CrlInvalid(f"the CRL file could not be loaded ({self._error})")
        if self._next_update is not None and self._next_update <= self._clock():
            _log.error(
                "CRL expired: every client certificate is refused until a new CRL is installed",
                file=str(self.path),
                next_update=self._next_update.isoformat(),
            )
            raise CrlExpired(
                f"the CRL expired at {self._next_update.isoformat()}; "
                "every client certificate is refused until a new one is installed"
            )

    def start(self, interval: float) -> None:
        """Poll the file every `interval` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(interval):
                if not self.reload_if_changed():
                    self._record_pending()

        self._thread = threading.Thread(target=loop, name="cofre-crl", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and recording. Once this returns no CRL is handed to the
        recorder again (one being recorded has been), whatever thread reloads (the
        poll's, if the join below gives up, or SIGHUP's): the stop's ``process.stop``
        entry is written after this, and a ``crl.load`` after it would show the
        process at work once it said it had stopped (session 33)."""
        self._stop.set()
        with self._record_lock:
            self._closed = True
            if self._recorder is not None:
                unrecorded = [*self._left_unrecorded, *(self._in_force - self._recorded)]
                for facts in dict.fromkeys(unrecorded):
                    _never_recorded(facts, "the process stopped before its entry was written")
        if self._thread is not None:
            self._thread.join(timeout=5)


def _never_recorded(facts: CrlFacts, why: str) -> None:
    """Log a CRL that was in force and will have no ``crl.load`` entry (the log's gap,
    named for the operator)."""
    _log.error(
        f"CRL load never recorded in the audit log: {why}",
        issuer=facts.issuer,
        crl_number=None if facts.number is None else format(facts.number, "x"),
        this_update=facts.this_update,
    )
