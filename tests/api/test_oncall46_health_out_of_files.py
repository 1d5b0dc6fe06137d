"""Session 46's on-call drill: a worker out of descriptors (`prlimit --nofile`) wrote
1,249 ERROR lines with tracebacks in about 1.5 s from its health listener alone, where
the mTLS listener wrote one line a second (`api.accept`: "cannot accept connections").

The health listener was the event loop's own server, and CPython 3.11's accept loop
(`asyncio.selector_events._accept_connection`) does not stop at ``EMFILE``: it logs
"socket.accept() out of system resource" with its traceback and schedules another
resumption for each of up to a backlog's worth of tries, at every wake-up. Now every
listener of a worker accepts through `api.accept` (plain HTTP as TLS): one line, then a
second's pause.

A real health server in a process of its own whose open-files limit is used up, and
real connections to it; the test counts log lines, never times.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import asyncio, os, resource, sys
from api.health import build_health_server
from api.lifecycle import Readiness

port = int(sys.argv[1])
server = build_health_server(lambda: {"database": "ok"}, Readiness(), "127.0.0.1", port)

async def main():
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    opened = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # Room for two connections more, then every accept fails EMFILE.
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 2, hard))
    print("LISTENING", flush=True)
    await serving

asyncio.run(main())
"""


def test_a_health_listener_out_of_descriptors_logs_a_line_a_pause_not_a_flood(
    tmp_path: Path,
) -> None:
    port = free_port()
    script = tmp_path / "health_server.py"
    script.write_text(SERVER)
    out = tmp_path / "server.log"
    with out.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, str(script), str(port)],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing
        while "LISTENING" not in out.read_text():
            assert server.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.05)
        # More connections than the server has descriptors for, held open: the ones
        # past its limit wait in the listening queue, readable, never accepted.
        clients.extend(socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40))
        # Until the server has tried to accept them, and (our listener) tried again.
        while out.read_text().count("cannot accept connections") < 2:
            text = out.read_text()
            if "out of system resource" in text and text.count("out of system resource") > 20:
                break  # the flood: judged below
            assert server.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()
        server.kill()
        server.wait(timeout=30)
    text = out.read_text()
    flood = text.count("out of system resource")
    assert flood == 0, f"{flood} asyncio accept errors logged: {text[:1500]}"
    assert "Traceback" not in text, text[:3000]
    assert "cannot accept connections" in text
