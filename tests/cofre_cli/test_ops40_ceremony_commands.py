"""docs/key-ceremony.md's command blocks, typed as the officers read them, in order, on
a `make run` vault (`cofre dev`), then the auditor's offline check of what they did
(session 40).

Each block is taken from the page and run through a shell, so redirections and
`$(cat …)` work as written: the procedure (custody, propose, approve, follow, verify,
cancel), the audit key rotation with the witness operator's pin, and the `register`
ceremony. The ids the page abbreviates (`7d3f…`, `9e1a…`, `<ID>`) are the ones the
commands print; each sample output line under a command must match what it printed
(`…` standing for anything). The procedure's last step cancelled `7d3f…`, the rotation
that had just run: as written it answered `error [ceremony_invalid]: … too late to
cancel`; the page now proposes the ceremony it cancels. Then the auditor exports the
evidence and verifies it offline with the key pinned before the audit key rotation and
the witness's key: every ceremony the officers ran is proven.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.dev import clean_env, start_dev, until_listening
from tests.support.doc_blocks import DOCS, fenced_commands

_CEREMONY = DOCS / "key-ceremony.md"
_ID = re.compile(r"ceremony ([0-9a-f-]{36}):")


class _Officers:
    """Runs the page's commands in `cwd` (the checkout: `.cofre-dev/` in it) with a
    `cofre` on the PATH, and keeps the ids the page abbreviates."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        bin_dir = cwd / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "cofre"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m cofre_cli "$@"\n')
        shim.chmod(0o755)
        self.env = clean_env() | {"PATH": f"{bin_dir}:{clean_env().get('PATH', '')}"}
        self.ids: dict[str, str] = {}

    def run(self, command: str) -> str:
        """Run `command` as typed (after the ids are put in); return its stdout and
        stderr. Fails the test on a non-zero exit."""
        for short, full in self.ids.items():
            command = command.replace(short, full)
        deadline = time.monotonic() + 120  # a far bound: fails only on a hang
        while True:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                input="y\n",  # the custody prompt, answered as the page shows
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            # A head seconds old may not be cosigned yet: its message says so, and the
            # officer runs the check again.
            if "not been reached yet" not in done.stdout + done.stderr:
                break
            assert time.monotonic() < deadline, done.stdout + done.stderr
            time.sleep(1)
        assert done.returncode == 0, (command, done.stdout + done.stderr)
        return done.stdout + done.stderr

    def block(self, after: str, *, replace: dict[str, str] | None = None) -> list[str]:
        """Run the sh block after `after`, checking each sample output line against the
        output of the command above it; return the outputs."""
        outputs: list[str] = []
        for typed, comment in fenced_commands(_CEREMONY, after):
            if typed:
                command = typed
                for old, new in (replace or {}).items():
                    command = command.replace(old, new)
                outputs.append(self.run(command))
                printed = _ID.search(outputs[-1])
                if printed and re.search(r"cofre keys (rotate|register) ", command):
                    # "`<ID>` is the ceremony id `rotate` prints"
                    self.ids["<ID>"] = printed.group(1)
                continue
            if not comment.startswith("   ") or not outputs:
                continue  # prose, not output
            sample = comment.strip()
            short = re.match(r"ceremony (\S+…):", sample)
            if short and short.group(1) not in self.ids:
                printed = _ID.search(outputs[-1])
                assert printed, outputs[-1]
                self.ids[short.group(1)] = printed.group(1)
            for short_id, full in self.ids.items():
                sample = sample.replace(short_id, full)
            pattern = ".*".join(re.escape(part) for part in sample.split("…"))
            assert re.search(pattern, outputs[-1]), (sample, outputs[-1])
        return outputs


@pytest.mark.hsm  # `cofre dev` creates SoftHSM2 tokens
def test_the_key_ceremony_pages_commands_run_as_written(tmp_path: Path) -> None:
    data_dir = tmp_path / ".cofre-dev"
    dev = start_dev(data_dir, clean_env(), "--workers", "1")
    try:
        until_listening(dev)
        officers = _Officers(tmp_path)
        before = datetime.now(UTC) - timedelta(minutes=5)

        procedure = officers.block("## The procedure (SoftHSM2 dev vault)")
        listed = [line for out in procedure for line in out.splitlines() if "pan_gcm-v1" in line]
        assert any("destroyed" in line and "0 records" in line for line in listed), listed
        assert "\nOK: " in "\n" + procedure[-3], procedure[-3]  # `cofre audit verify`

        # In dev the witness's files are under .cofre-dev/witness/ ("w1.vkey … in dev
        # .cofre-dev/witness/witness.vkey").
        shutil.copy(data_dir / "witness" / "witness.vkey", tmp_path / "w1.vkey")
        audit = officers.block(
            "### Rotating the audit signing key (`--kind audit`)",
            replace={"/srv/witness/": ".cofre-dev/witness/"},
        )
        assert "audit rotation, completed" in audit[2], audit[2]
        assert "\nOK: " in "\n" + audit[-1], audit[-1]

        # The register block's label is the one an incident names; this vault's KEK is v1.
        status = json.loads(officers.run("cofre hsm status --json 2>/dev/null"))
        kek = next(k for k in status["keys"] if k["label"] == "cofre-kek-v1")
        officers.ids |= {"<KEY_ID>": kek["key_id"], "<KEY_CHECK>": kek["key_check"]}
        registered = officers.block(
            "## A label a forged registration took",
            replace={"cofre-kek-v2": "cofre-kek-v1"},
        )
        # Not "register rotation" (session 46): a registration rotates nothing.
        assert "key registration, completed" in registered[2], registered[2]

        # The auditor: a bundle of the day, verified offline with the key pinned before
        # the rotation and the witness's key.
        after = datetime.now(UTC) + timedelta(minutes=1)
        officers.run(
            f"cofre evidence export --from {before:%Y-%m-%dT%H:%M:%S} "
            f"--to {after:%Y-%m-%dT%H:%M:%S} --out bundle.tar.gz --as auditor"
        )
    finally:
        dev.terminate()
        dev.communicate(timeout=120)
    verified = subprocess.run(
        [
            *(sys.executable, "-m", "cofre_evidence_verifier", "bundle.tar.gz"),
            *("--public-key", "old-audit.pem", "--witness-key", "w1.vkey"),
            *("--origin", "cofre-audit/cofre", "--json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    kinds = sorted(c["kind"] for c in report["summary"]["dual_control"] if c["proven"])
    assert kinds == ["audit", "data", "register"], report["summary"]["dual_control"]
