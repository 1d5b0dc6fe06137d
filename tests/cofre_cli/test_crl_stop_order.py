"""A worker's ``process.stop`` is its last audit entry: no ``crl.load`` after it.

The CRL watcher polls its file in a thread of its own (and SIGHUP reloads it in
another), and each CRL it puts in force is a ``crl.load`` entry (PCI DSS 10.2.1.5,
finding F6). `Runtime.close` wrote ``process.stop`` without stopping it, so a poll (or
a reload) at that moment wrote a ``crl.load`` after the stop: the log then showed the
process at work after it said it had stopped (session 33). The race is driven here
without sleeping: a new CRL is put in force from inside `close`, right after
``process.stop`` is written, as a poll in flight would."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from api.crl import CrlWatcher
from api.pki import ensure_dev_pki, revoke_clients
from cofre.settings import Settings
from cofre_cli.audit_trail import CRL_LOAD, PROCESS_STOP
from cofre_cli.wiring import build_runtime
from hsm.provider import HSMProvider


def _actions(database: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT payload FROM audit_entries ORDER BY id"))
            return [json.loads(row[0])["action"] for row in rows]
    finally:
        engine.dispose()


def test_no_crl_load_is_written_after_the_process_stop(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    policy = data / "policy.toml"
    policy.write_text("")
    runtime = build_runtime(Settings(data_dir=data, policy_file=policy), provider=hsm_provider)
    pki = ensure_dev_pki(tmp_path / "pki", identities=("payments", "ledger"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=str(pki.ca))
    crl = revoke_clients(pki, [], tmp_path / "crl.pem")
    watcher = CrlWatcher(crl, context)
    watcher.reload()
    runtime.record_crl_changes(watcher)  # as `cofre serve`'s worker does

    sequencer_stop = runtime.sequencer_thread.stop
    reloaded: list[Any] = []

    def stop_after_a_new_crl() -> None:
        # `close` calls this right after writing `process.stop`: a new CRL arrives and
        # the watcher reloads it now, as its poll thread (or a SIGHUP) would.
        revoke_clients(pki, ["ledger"], crl)
        reloaded.append(watcher.reload_if_changed())
        sequencer_stop()

    runtime.sequencer_thread.stop = stop_after_a_new_crl  # type: ignore[method-assign]
    runtime.close()
    assert reloaded == [True], "the new CRL was not read during close"
    actions = _actions(data / "cofre.sqlite3")
    assert actions.count(CRL_LOAD) == 1, actions  # the CRL the process started with
    stop = actions.index(PROCESS_STOP)
    assert CRL_LOAD not in actions[stop:], actions
