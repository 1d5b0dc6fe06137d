"""Review of session 32 (finding F6, PCI DSS 10.2.1.5): each CRL a process puts in force
is a `crl.load` entry, once. Held: an operator's shell account that rewrites the CRL
file in a loop, or swaps two CRLs back and forth, adds no entry after the first of each
(no unbounded growth of the log); a write that fails is handed over again at the next
reload, once, and the CRL stays in force meanwhile."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from api.crl import MAX_UNRECORDED_CRLS, CrlFacts, CrlWatcher
from api.errors import CertificateRevoked
from api.pki import DevPKI, ensure_dev_pki, revoke_clients
from audit.errors import AuditWriteFailed


def test_a_crl_swapped_back_and_forth_is_recorded_once_each(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments", "ledger"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    empty = revoke_clients(pki, [], tmp_path / "empty.pem").read_bytes()
    revoking = revoke_clients(pki, ["ledger"], tmp_path / "revoking.pem").read_bytes()
    path = tmp_path / "crl.pem"
    path.write_bytes(empty)
    watcher = CrlWatcher(path, context)
    watcher.reload()
    recorded: list[CrlFacts] = []
    failing = [True]

    def recorder(facts: CrlFacts) -> None:
        if facts.revoked == 1 and failing[0]:
            failing[0] = False
            raise AuditWriteFailed("the database refused")
        recorded.append(facts)

    watcher.record_changes(recorder)
    assert [f.revoked for f in recorded] == [0]
    path.write_bytes(revoking)
    watcher.reload()  # its write fails: not recorded, still in force
    assert [f.revoked for f in recorded] == [0]
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(pki.client_cert("ledger").read_text())
    for _ in range(25):
        path.write_bytes(empty)
        watcher.reload()
        path.write_bytes(revoking)
        watcher.reload()
        path.write_bytes(revoking)  # the same file rewritten
        watcher.reload()
    assert sorted(f.revoked for f in recorded) == [0, 1]


def _numbered_crl(pki: DevPKI, number: int, out: Path, revoke: tuple[str, ...] = ()) -> bytes:
    """A CRL of the dev CA with CRL number `number` (each number a distinct CRL)."""
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for name in revoke:
        cert = x509.load_pem_x509_certificate(pki.client_cert(name).read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - timedelta(minutes=1))
            .build()
        )
    out.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return out.read_bytes()


def _watcher(tmp_path: Path) -> tuple[DevPKI, CrlWatcher]:
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments", "ledger"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    return pki, CrlWatcher(tmp_path / "crl.pem", context)


def test_a_crl_replaced_before_its_entry_was_written_is_still_recorded(
    tmp_path: Path,
) -> None:
    """A CRL put in force whose `crl.load` could not be written, and that a newer file
    replaced before the next reload, was dropped from the retry (only the CRLs in force
    were retried): its revocations were in force, and the log never said so (session
    33). It is now recorded at the next reload, before the newer one."""
    pki, watcher = _watcher(tmp_path)
    watcher.path.write_bytes(_numbered_crl(pki, 1, tmp_path / "1.pem"))
    watcher.reload()
    recorded: list[int | None] = []
    failing = [False]

    def recorder(facts: CrlFacts) -> None:
        if failing[0]:
            failing[0] = False
            raise AuditWriteFailed("the database refused")
        recorded.append(facts.number)

    watcher.record_changes(recorder)
    assert recorded == [1]
    failing[0] = True
    watcher.path.write_bytes(_numbered_crl(pki, 2, tmp_path / "2.pem", ("ledger",)))
    watcher.reload()  # in force, its entry refused
    assert recorded == [1]
    with pytest.raises(CertificateRevoked):
        watcher.revoked.check(pki.client_cert("ledger").read_text())
    watcher.path.write_bytes(_numbered_crl(pki, 3, tmp_path / "3.pem", ("ledger",)))
    watcher.reload()
    assert recorded == [1, 2, 3]
    watcher.reload()
    assert recorded == [1, 2, 3]  # each once


def test_crls_waiting_for_their_entry_are_bounded_and_the_oldest_is_kept(
    tmp_path: Path,
) -> None:
    """While the audit log refuses every write, each CRL replaced before its entry was
    written waits for it: at most `MAX_UNRECORDED_CRLS` of them (memory is bounded; each
    one dropped is logged as never recorded). The oldest are kept, and recorded first,
    then the one in force, once the log takes writes again."""
    pki, watcher = _watcher(tmp_path)
    refusing = [True]
    recorded: list[int | None] = []

    def recorder(facts: CrlFacts) -> None:
        if refusing[0]:
            raise AuditWriteFailed("the database refused")
        recorded.append(facts.number)

    watcher.record_changes(recorder)
    published = MAX_UNRECORDED_CRLS + 3
    with capture_logs() as logs:
        for number in range(1, published + 1):
            watcher.path.write_bytes(_numbered_crl(pki, number, tmp_path / f"{number}.pem"))
            watcher.reload()
    dropped = [e for e in logs if e["event"].startswith("CRL load never recorded")]
    assert [e["crl_number"] for e in dropped] == [f"{n:x}" for n in (published - 2, published - 1)]
    refusing[0] = False
    watcher.reload()
    assert recorded == [*range(1, MAX_UNRECORDED_CRLS + 1), published]


def test_a_crl_still_waiting_for_its_entry_at_stop_is_logged_as_never_recorded(
    tmp_path: Path,
) -> None:
    """`stop` ends recording (a `crl.load` after `process.stop` is refused), so a CRL
    whose entry was refused until then will have none: the vault's log names it, the
    one replaced and the one in force alike."""
    pki, watcher = _watcher(tmp_path)

    def refuse(facts: CrlFacts) -> None:
        raise AuditWriteFailed("the database refused")

    watcher.record_changes(refuse)
    for number in (1, 2):
        watcher.path.write_bytes(_numbered_crl(pki, number, tmp_path / f"{number}.pem"))
        watcher.reload()
    with capture_logs() as logs:
        watcher.stop()
    never = [e for e in logs if e["event"].startswith("CRL load never recorded")]
    assert [e["crl_number"] for e in never] == ["1", "2"]
