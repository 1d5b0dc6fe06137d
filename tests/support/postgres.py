"""A throwaway PostgreSQL cluster for the test suite: initdb + pg_ctl in a temp dir.

initdb refuses to run as root, so when the suite runs as root (CI does) only the server
runs as the unprivileged ``postgres`` user, through runuser (README, Tests).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


class PostgresUnavailable(RuntimeError):
    """The cluster could not be started or reached; the suite must fail, never skip."""


def find_bindir() -> Path:
    """Return the directory of initdb/pg_ctl: $COFRE_PG_BINDIR, the newest Debian
    /usr/lib/postgresql/N/bin, or wherever `initdb` is on PATH."""
    override = os.environ.get("COFRE_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb) found: run `make test`, which installs the "
        "postgresql package, or set COFRE_PG_BINDIR"
    )


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on, drawn below the kernel's ephemeral range.

    A port the kernel hands out for port 0 is in that range (32768-60999 here), where
    any outgoing connection the suite makes meanwhile (to PostgreSQL, to a vault, a
    relay's) may take it as its local port before the test binds it: session 34's CIs
    met `Address already in use` twice that way. Drawn with `secrets`, not `random`:
    pytest-randomly reseeds `random` for every test."""
    low = _ephemeral_low()
    for _ in range(200):
        port = 10_000 + secrets.randbelow(low - 10_000) if low > 11_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or in TIME_WAIT: draw again
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port below the ephemeral range after 200 draws")


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux), else IANA's 49152."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152


@dataclass
class PostgresCluster:
    """One server on 127.0.0.1:`port`, data in `base`/data, log in `base`/postgres.log."""

    base: Path
    port: int
    bindir: Path
    durable: bool = False
    # A fault test exhausts a small limit (tests/reliability/test_oncall_faults.py).
    max_connections: int = 200
    _as_postgres: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def sqlalchemy_url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_postgres, *argv], capture_output=True, text=True, check=False, timeout=120
        )

    @classmethod
    def create(cls, *, durable: bool = False, max_connections: int = 200) -> PostgresCluster:
        """initdb a new cluster in a fresh temp dir (not started)."""
        bindir = find_bindir()
        base = Path(tempfile.mkdtemp(prefix="cofre-pg-"))
        as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        cluster = cls(
            base=base,
            port=free_port(),
            bindir=bindir,
            durable=durable,
            max_connections=max_connections,
            _as_postgres=as_postgres,
        )
        result = cluster._run(
            str(bindir / "initdb"),
            "-D",
            str(cluster.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C.UTF-8",
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        return cluster

    def start(self) -> None:
        options = f"-k {self.base} -p {self.port} -h 127.0.0.1"
        options += f" -c max_connections={self.max_connections}"
        if not self.durable:
            # A throwaway cluster: durability is not under test here. Crash tests pass
            # durable=True and keep PostgreSQL's defaults.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        result = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise PostgresUnavailable(
                f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log[-2000:]}"
            )
        wait_until_reachable(self.dsn())

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def keep_log(self, dest: Path) -> None:
        """Copy the server log into `dest`, where the session's leak scan reads it."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists():
            shutil.copy(self.log_file, dest / f"postgres-{self.port}.log")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def wait_until_reachable(dsn: str, timeout_s: float = 15.0) -> None:
    """Return once `dsn` accepts a connection; raise `PostgresUnavailable` after timeout."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
        else:
            return
    raise PostgresUnavailable(f"PostgreSQL at {dsn} is not reachable: {last}")
