"""The development witness: `cofre dev` runs one `cofre witness serve` process beside the
vault, so `make run` exercises witnessed checkpoints end to end.

For development only: in production the witness belongs to a party outside the vault's
operators (docs/operations.md). Here it is still its own process with its own key and
state under ``<data dir>/witness/`` (never the vault's HSM or database); the vault learns
its URL and pinned key through ``COFRE_AUDIT__WITNESSES``.

A witness follows an audit key handover only to a key its operator pinned (`cofre
witness trust-key`). In dev one person plays every part, the witness operator's too, so
`cofre dev` pins for them (`pin_dev_handovers`): each key a stored, doubly signed
handover introduces. A production witness never does this (docs/key-ceremony.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from audit.errors import NoteError
from audit.note import CosignerKey, parse_handover
from audit.store import AuditStore
from cofre.errors import CofreError, ConfigurationError
from witness.state import WitnessState

_LISTENING = re.compile(r"listening on (https?://[0-9.]+:[0-9]+)")
DEV_WITNESS_NAME = "witness.cofre-dev.local/w1"


@dataclass
class DevWitness:
    process: subprocess.Popen[str]
    url: str
    vkey: str
    directory: Path
    _stop_pinning: threading.Event = field(default_factory=threading.Event)

    def pin_handovers_from(self, engine: Engine, interval: float = 1.0) -> None:
        """Keep pinning, in a thread, the keys the vault's handovers introduce (see the
        module docstring) until `stop()`."""

        def loop() -> None:
            while not self._stop_pinning.wait(interval):
                try:
                    pin_dev_handovers(engine, self.directory / "state.sqlite3")
                except (SQLAlchemyError, CofreError):
                    continue  # the database is busy or not migrated yet: next time

        threading.Thread(target=loop, name="cofre-dev-witness-pin", daemon=True).start()

    def stop(self) -> None:
        self._stop_pinning.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_dev_witness(data_dir: Path, log_vkey: str, timeout: float = 30) -> DevWitness:
    """Start the dev witness (creating its key on first run), trusting the log `log_vkey`;
    point the vault at it (``COFRE_AUDIT__WITNESSES``) and return it. Raises
    `ConfigurationError` when it does not start."""
    directory = data_dir / "witness"
    directory.mkdir(mode=0o700, exist_ok=True)
    key_file = directory / "witness.key"
    if not key_file.exists():
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(CosignerKey.generate(DEV_WITNESS_NAME).encode() + "\n")
    vkey = CosignerKey.parse(key_file.read_text(encoding="utf-8")).verifier_key().encode()
    (directory / "witness.vkey").write_text(vkey + "\n", encoding="utf-8")
    (directory / "logs.vkeys").write_text(log_vkey + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
    env["COFRE_WITNESS_KEY_FILE"] = str(key_file)
    # Our own interpreter and module, fixed arguments: no input from outside reaches it.
    process = subprocess.Popen(  # noqa: S603
        [
            *(sys.executable, "-m", "cofre_cli", "witness", "serve", "--port", "0"),
            *("--state", str(directory / "state.sqlite3")),
            *("--logs", str(directory / "logs.vkeys")),
            # Ends when this process does, by any signal (`cofre_cli._parent.die_with`).
            *("--parent-pid", str(os.getpid())),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = process.stderr
    if stderr is None:  # pragma: no cover - stderr=PIPE always gives one
        raise ConfigurationError("the dev witness has no stderr")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = stderr.readline()
            if not line:
                break
            found = _LISTENING.search(line)
            if found:
                # Keep reading its log (stderr) so the pipe never fills: into a file.
                _drain_to(stderr, directory / "witness.log")
                os.environ["COFRE_AUDIT__WITNESSES"] = json.dumps(
                    [{"url": found.group(1), "vkey": vkey}]
                )
                return DevWitness(process, found.group(1), vkey, directory)
    except BaseException:
        process.kill()  # a stop (SystemExit, KeyboardInterrupt) while it starts: not left behind
        raise
    process.kill()
    raise ConfigurationError("the dev witness did not start (see `cofre witness serve`)")


def pin_dev_handovers(engine: Engine, state_file: Path) -> int:
    """Pin in the dev witness's state each new key that a handover stored in the vault's
    database introduces, when both keys signed it. Returns how many were new."""
    added = 0
    state = WitnessState(state_file)
    try:
        for note in AuditStore(engine).handover_notes():
            try:
                handover = parse_handover(note)
            except NoteError:
                continue  # not a valid handover: never pinned, the witness refuses it
            added += state.pin_key(handover.new.name, handover.new.encode())
    finally:
        state.close()
    return added


def _drain_to(stderr: IO[str], log: Path) -> None:
    def copy() -> None:
        with log.open("a", encoding="utf-8") as handle:
            for line in stderr:
                handle.write(line)
                handle.flush()

    threading.Thread(target=copy, name="cofre-dev-witness-log", daemon=True).start()
