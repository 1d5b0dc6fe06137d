"""`cofre witness trust-key`: the witness operator's pin of a log's next audit key, run as
the operator runs it (a subprocess writing the witness's state file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audit.note import CosignerKey
from witness.state import WitnessState

COFRE = [sys.executable, "-m", "cofre_cli", "witness", "trust-key"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COFRE, *args], capture_output=True, text=True, timeout=120, check=False)


def test_trust_key_pins_a_key_of_a_configured_log(tmp_path: Path) -> None:
    current, following = CosignerKey.generate("example.log"), CosignerKey.generate("example.log")
    logs, state = tmp_path / "logs.vkeys", tmp_path / "state.sqlite3"
    logs.write_text(current.note_verifier_key().encode() + "\n", encoding="utf-8")
    vkey = following.note_verifier_key().encode()

    first = _run(vkey, "--state", str(state), "--logs", str(logs))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("pinned ")
    again = _run(vkey, "--state", str(state), "--logs", str(logs))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already pinned ")
    witness_state = WitnessState(state)
    try:
        assert witness_state.pinned_keys("example.log") == [vkey]
    finally:
        witness_state.close()


def test_trust_key_refuses_a_malformed_key_or_an_unknown_log(tmp_path: Path) -> None:
    logs, state = tmp_path / "logs.vkeys", tmp_path / "state.sqlite3"
    logs.write_text(CosignerKey.generate("example.log").note_verifier_key().encode() + "\n")
    malformed = _run("not-a-vkey", "--state", str(state), "--logs", str(logs))
    assert malformed.returncode == 1
    assert "verifier key" in malformed.stderr
    other = CosignerKey.generate("other.log").note_verifier_key().encode()
    unknown = _run(other, "--state", str(state), "--logs", str(logs))
    assert unknown.returncode == 1
    assert "no log with origin 'other.log'" in unknown.stderr
    assert not state.exists()
