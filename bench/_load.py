"""Load from native code: wrk (C) sends plain HTTP to a loopback haproxy that originates
mutual TLS with the ``payments`` client certificate over keep-alive connections.

Why not Python client threads: they share the two cores with the server and measure
themselves (bench/api.py's old httpx threads peaked at ~1,400 req/s against a bare
FastAPI that wrk drives to ~3,300). wrk cannot present a client certificate, so haproxy
(``http-reuse always``, one thread) holds the TLS connections to the server; both are
Debian packages installed by ``make bench`` (the Makefile's ``bench-deps``). haproxy and wrk take
CPU too: only figures measured behind the same set-up in the same run are compared.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from api.pki import DevPKI
from tests.support.postgres import free_port

WRK_DIR = Path(__file__).resolve().parent / "wrk"


@dataclass(frozen=True)
class Result:
    """One wrk run: throughput, latency percentiles (ms) and failed requests."""

    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    connections: int
    seconds: float
    # Established haproxy -> server TCP connections seen mid-run (`ss`): keep-alive reuse.
    server_connections: int


class MTLSProxy:
    """haproxy on 127.0.0.1:`port` (plain HTTP) forwarding to the server at
    `server_port` (round robin over `more_ports` too: several nodes) over mutual TLS as
    `identity`, reusing server connections."""

    def __init__(
        self,
        pki: DevPKI,
        server_port: int,
        identity: str = "payments",
        more_ports: tuple[int, ...] = (),
    ) -> None:
        self.port = free_port()
        self.server_port = server_port
        self.server_ports = (server_port, *more_ports)
        self._dir = Path(tempfile.mkdtemp(prefix="cofre-haproxy-"))
        bundle = self._dir / "client.pem"
        bundle.write_text(
            pki.client_cert(identity).read_text() + pki.client_key(identity).read_text()
        )
        bundle.chmod(0o600)
        config = self._dir / "haproxy.cfg"
        config.write_text(
            "global\n"
            "  nbthread 1\n"
            "  maxconn 4096\n"
            "  tune.ssl.default-dh-param 2048\n"
            "defaults\n"
            "  mode http\n"
            "  timeout connect 5s\n"
            "  timeout client 60s\n"
            "  timeout server 60s\n"
            "  option http-keep-alive\n"
            "frontend load\n"
            f"  bind 127.0.0.1:{self.port}\n"
            "  default_backend vault\n"
            "backend vault\n"
            "  balance roundrobin\n"
            "  http-reuse always\n"
            + "".join(
                f"  server s{i} 127.0.0.1:{p} ssl verify required "
                f"ca-file {pki.ca} crt {bundle} alpn http/1.1\n"
                for i, p in enumerate(self.server_ports)
            )
        )
        self._process = subprocess.Popen(
            [_tool("haproxy"), "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise SystemExit(f"haproxy did not start: {self._process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("haproxy did not listen in time") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._process.terminate()
        self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def established(self) -> int:
        """TCP connections from haproxy to the server(s) now established (`ss -tn`)."""
        ports = " or ".join(f"dport = :{p}" for p in self.server_ports)
        out = subprocess.run(
            [_tool("ss"), "-Htn", "state", "established", f"( {ports} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return len([line for line in out.splitlines() if line.strip()])


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        if children.exists():
            todo.extend(int(p) for p in children.read_text().split())
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used so far (/proc stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended since it was listed
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _tool(name: str) -> str:
    sbin = Path("/usr/sbin") / name
    found = shutil.which(name) or (str(sbin) if sbin.exists() else None)
    if found is None:
        raise SystemExit(f"{name} is missing: `make bench` installs it (apt)")
    return found


def wrk(
    proxy: MTLSProxy,
    script: str,
    *,
    connections: int,
    seconds: float,
    args: list[str],
    timeout_s: int = 30,
) -> Result:
    """Run ``bench/wrk/<script>.lua`` through `proxy` and return what it measured."""
    threads = 1 if connections < 8 else 2
    process = subprocess.Popen(
        [
            _tool("wrk"),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            f"--timeout={timeout_s}s",
            "-s",
            str(WRK_DIR / f"{script}.lua"),
            proxy.url,
            "--",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Mid-run, every wrk connection has a server connection behind it (or shares one).
    time.sleep(min(2.0, seconds / 2))
    server_connections = proxy.established()
    out, err = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({process.returncode}): {out[-1000:]} {err[-1000:]}")
    data = json.loads(lines[-1].removeprefix("RESULT "))
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return Result(
        req_per_s=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        server_connections=server_connections,
    )
