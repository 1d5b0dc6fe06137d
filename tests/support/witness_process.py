"""A `cofre witness serve` process for tests: its own key, state file and listener."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from audit.note import CosignerKey
from cofre.settings import AuditSettings, WitnessSettings

_LISTENING = re.compile(r"listening on (https?://[0-9.a-z]+:[0-9]+)")


@dataclass
class WitnessProcess:
    """Start with `start()`; `url` is its submission prefix; `stop()` ends it."""

    directory: Path
    log_vkeys: list[str]
    name: str = "witness.test/w1"
    skey: str | None = None
    process: subprocess.Popen[str] | None = None
    url: str = ""
    output: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = CosignerKey.parse(self.skey) if self.skey else CosignerKey.generate(self.name)
        key_file = self.directory / "witness.key"
        if not key_file.exists():
            key_file.write_text(key.encode() + "\n", encoding="utf-8")
            key_file.chmod(0o600)
        self.key = CosignerKey.parse(key_file.read_text(encoding="utf-8"))
        self.vkey = self.key.verifier_key().encode()
        (self.directory / "logs.vkeys").write_text("\n".join(self.log_vkeys) + "\n")

    def start(self, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
        env["COFRE_WITNESS_KEY_FILE"] = str(self.directory / "witness.key")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cofre_cli",
                "witness",
                "serve",
                "--port",
                "0",
                "--state",
                str(self.directory / "state.sqlite3"),
                "--logs",
                str(self.directory / "logs.vkeys"),
                *self.extra_args,
            ],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.output.append(line)
            found = _LISTENING.search(line)
            if found:
                self.url = found.group(1)
                return
        self.stop()
        raise RuntimeError("the witness did not start:\n" + "".join(self.output))

    def trust_key(self, vkey: str) -> str:
        """Pin `vkey` as its operator would (`cofre witness trust-key`, a process of its
        own writing the witness's state); returns what the command printed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
        done = subprocess.run(
            [sys.executable, "-m", "cofre_cli", "witness", "trust-key", vkey,
             "--state", str(self.directory / "state.sqlite3"),
             "--logs", str(self.directory / "logs.vkeys")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    def post(self, body: bytes) -> httpx.Response:
        return httpx.post(
            self.url + "/add-checkpoint", content=body, timeout=30, verify=self._verify()
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, verify=self._verify())

    def logged(self) -> str:
        """Everything the witness wrote to stderr so far (after `stop()`: all of it)."""
        return "".join(self.output)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            _, rest = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, rest = self.process.communicate()
        self.output.append(rest or "")
        self.process = None


def witnessed_audit(witness: WitnessProcess) -> AuditSettings:
    """A test vault's audit settings with `witness` pinned: a head signed every second
    (or 50 entries) and published to it every 0.2 s, so a test waits little for either."""
    return AuditSettings(
        sign_every_entries=50,
        sign_every_seconds=1.0,
        witnesses=(WitnessSettings(url=witness.url, vkey=witness.vkey),),
        publish_interval_seconds=0.2,
    )
