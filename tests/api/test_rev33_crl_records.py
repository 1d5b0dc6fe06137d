"""Review of session 32 (finding F6, PCI DSS 10.2.1.5): each CRL a process puts in force
is a `crl.load` entry, once. Held: an operator's shell account that rewrites the CRL
file in a loop, or swaps two CRLs back and forth, adds no entry after the first of each
(no unbounded growth of the log); a write that fails is handed over again at the next
reload, once, and the CRL stays in force meanwhile."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from api.crl import CrlFacts, CrlWatcher
from api.errors import CertificateRevoked
from api.pki import ensure_dev_pki, revoke_clients
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
