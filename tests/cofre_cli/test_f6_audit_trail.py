"""Finding F6 (docs/pci-tokenization.md, PCI DSS 10.2.1.3 and 10.2.1.6): the CLI's reads
of the audit log and a vault process's graceful stop are audit entries.

Real `cofre serve` and `cofre audit` processes, a copy of the suite's SoftHSM token,
SQLite and PostgreSQL. Before the fix no CLI read and no stop wrote an entry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.pki import revoke_clients
from tests.support.softhsm import SoftHSMToken
from tests.support.vault_process import VaultProcess, make_vault

# Each CLI read of the log, with the `what` its entry names (the API's words where the
# API reads the same thing: `vault.operations.audit_access`).
READS: list[tuple[tuple[str, ...], str]] = [
    (("audit", "head"), "head"),
    (("audit", "prove", "--index", "0", "--from-size", "1"), "inclusion proof"),
    (("audit", "verify", "--unsafe-no-witness"), "verify"),
    (("audit", "export", "--out", "{out}"), "export"),
]


def _payloads(url: str) -> list[dict[str, Any]]:
    """Every audit entry written, sequenced or still queued, in the order written."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT payload FROM audit_entries ORDER BY id"))
            return [json.loads(row[0]) for row in rows]
    finally:
        engine.dispose()


def _started_and_stopped(tmp_path: Path, token: SoftHSMToken, url: str) -> VaultProcess:
    vault = make_vault(tmp_path / "node", token, url)
    vault.start()
    vault.stop()
    assert vault.process is not None
    assert vault.process.returncode == 0, vault.log.read_text()[-3000:]
    return vault


def _run(vault: VaultProcess, args: tuple[str, ...], out: Path) -> tuple[int, str, str]:
    done = vault.cofre(*(a.replace("{out}", str(out)) for a in args))
    return done.returncode, done.stdout, done.stderr


def test_each_graceful_stop_is_an_entry_after_its_start(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """10.2.1.6: a SIGTERM'd vault writes `process.stop` naming the process its
    `policy.load` started, once per worker that started (one, then two)."""
    vault = _started_and_stopped(tmp_path, softhsm_token, database_url)
    vault.env["COFRE_SERVER__WORKERS"] = "2"
    vault.start()
    vault.stop()
    assert vault.process is not None
    assert vault.process.returncode == 0, vault.log.read_text()[-3000:]
    entries = _payloads(database_url)
    starts = [e for e in entries if e["action"] == "policy.load"]
    stops = [e for e in entries if e["action"] == "process.stop"]
    assert len(starts) == 3
    assert len(stops) == 3
    for stop in stops:
        details = stop["details"]
        assert isinstance(details, dict)
        assert stop["actor"] == "cofre"
        assert stop["outcome"] == "success"
        assert isinstance(details["pid"], int)
        assert details["host"] == os.uname().nodename
        # The process's start names the same process: the auditor pairs them.
        assert [s for s in starts if s["details"]["pid"] == details["pid"]]
    # Each stop comes after its own start, and the first run's stop before the
    # second run's starts.
    kinds = [e["action"] for e in entries if e["action"] in ("policy.load", "process.stop")]
    assert kinds[:2] == ["policy.load", "process.stop"]
    assert sorted(kinds[2:]) == ["policy.load"] * 2 + ["process.stop"] * 2


def test_each_cli_read_of_the_log_is_recorded(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """10.2.1.3: `cofre audit head|prove|verify|export` each write one `audit_read`
    entry (the API's action) naming the command, before they read."""
    vault = _started_and_stopped(tmp_path, softhsm_token, database_url)
    sequenced = vault.cofre("audit", "sequence")
    assert sequenced.returncode == 0, sequenced.stderr
    out = tmp_path / "export.jsonl"
    for args, _ in READS:
        code, _, stderr = _run(vault, args, out)
        assert code == 0, (args, stderr)
    reads = [e for e in _payloads(database_url) if e["action"] == "audit_read"]
    assert [(e["actor"], e["details"]["what"]) for e in reads] == [
        (f"cofre {' '.join(args[:2])}", what) for args, what in READS
    ]
    for entry in reads:
        details = entry["details"]
        assert isinstance(details, dict)
        assert details["command"] == entry["actor"]
        assert details["host"] == os.uname().nodename
        assert isinstance(details["os_user"], str)
        assert entry["outcome"] == "success"
    prove = reads[1]["details"]
    assert isinstance(prove, dict)
    assert (prove["index"], prove["from_size"]) == (0, 1)


def _refuse_writes(url: str) -> None:
    """`url` on which no audit entry can be written: a read-only PostgreSQL connection
    (a hot standby, or `default_transaction_read_only`), or a SQLite store whose audit
    table refuses inserts (the suite runs as root, so file modes would not)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # Every new session read-only, as on a hot standby.
                name = make_url(url).database
                connection.execute(
                    text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                )
            else:
                connection.execute(
                    text(
                        "CREATE TRIGGER audit_entries_refused BEFORE INSERT ON audit_entries "
                        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                    )
                )
    finally:
        engine.dispose()


def test_a_cli_read_that_cannot_be_recorded_reads_nothing(
    tmp_path: Path, softhsm_token: SoftHSMToken, database_url: str
) -> None:
    """Fail closed, as the API: no entry, no read; exit 1 with `audit_unavailable`."""
    vault = _started_and_stopped(tmp_path, softhsm_token, database_url)
    assert vault.cofre("audit", "sequence").returncode == 0
    before = _payloads(database_url)
    _refuse_writes(database_url)
    out = tmp_path / "export.jsonl"
    for args, _ in READS:
        code, stdout, stderr = _run(vault, args, out)
        assert code == 1, (args, stdout, stderr)
        assert stdout == "", args
        assert "error [audit_unavailable]" in stderr, (args, stderr)
        assert "Traceback" not in stderr
    assert not out.exists()
    assert _payloads(database_url) == before


def _wait_for(condition: object, what: str) -> None:
    """Poll `condition` until true; fail on a hang only (no timing asserted)."""
    assert callable(condition)
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_each_crl_put_in_force_is_recorded_once(
    tmp_path: Path, softhsm_token: SoftHSMToken
) -> None:
    """10.2.1.5: the CRL a process starts with and each new one it polls are `crl.load`
    entries (issuer, number, thisUpdate, nextUpdate, revoked count); the same CRL read
    again (its file rewritten, every poll) is not recorded again."""
    vault = make_vault(tmp_path / "node", softhsm_token, None)
    crl = revoke_clients(vault.pki, [], tmp_path / "crl.pem")
    vault.env.update(
        {
            "COFRE_SERVER__CRL_FILE": str(crl),
            "COFRE_SERVER__CRL_RELOAD_SECONDS": "0.2",
            "COFRE_LOG_LEVEL": "INFO",
        }
    )
    vault.start()
    url = f"sqlite:///{tmp_path / 'node' / 'cofre.sqlite3'}"

    def loaded() -> int:
        return vault.log.read_text().count('"CRL loaded"')

    def recorded() -> list[dict[str, Any]]:
        return [e for e in _payloads(url) if e["action"] == "crl.load"]

    revoke_clients(vault.pki, ["ledger"], crl)  # a new CRL: one serial revoked
    _wait_for(lambda: len(recorded()) == 2, "the new CRL's entry")
    crl.write_bytes(crl.read_bytes())  # the same CRL, its file rewritten
    _wait_for(lambda: loaded() >= 3, "the rewritten file's reload")
    vault.stop()
    entries = recorded()
    assert [e["details"]["revoked"] for e in entries] == [0, 1]
    for entry in entries:
        details = entry["details"]
        assert isinstance(details, dict)
        assert details["issuer"]
        assert details["this_update"]
        assert details["next_update"]
        assert details["pid"] == entries[0]["details"]["pid"]
