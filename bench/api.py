"""API throughput over real mutual TLS: single tokenize req/s and p50/p99 latency at 1, 8
and 32 concurrent keep-alive clients, beside a bare FastAPI endpoint behind the same
uvicorn and TLS settings, measured in the same run; on SQLite and on PostgreSQL; and
batch tokenize PANs/s. Goals (issue 8): vault >= 50% of bare req/s; p99 <= 25 ms at 32
clients; batch >= 20,000 PANs/s.

Servers run in child processes (one each, as in production); the load comes from
threads in this process, each with its own keep-alive connection, the same client code
for both servers. Loopback only.

Run: .venv/bin/python -m bench.api [--seconds 5] [--databases sqlite,postgresql]
     [--plot latency.png]
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from api.pki import DevPKI, ensure_dev_pki
from bench._setup import LOAD_POLICY, bench_token
from tests.support.postgres import PostgresCluster, free_port
from vault.pan import luhn_check_digit


def _pan(i: int) -> str:
    body = f"4{i:014d}"
    return body + luhn_check_digit(body)


def _client(pki: DevPKI, url: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert("payments")), str(pki.client_key("payments")))
    return httpx.Client(base_url=url, verify=context, timeout=30)


def _wait(pki: DevPKI, url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("server process exited during start-up")
        try:
            with _client(pki, url) as c:
                c.post("/v1/tokenize", json={"pan": _pan(0), "format": "pan_bin6_last4"})
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def _load(pki: DevPKI, url: str, clients: int, seconds: float, offset: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    errors = [0]

    def worker(index: int) -> None:
        mine = []
        with _client(pki, url) as c:
            i = 0
            while time.monotonic() < stop:
                pan = _pan(offset + index * 1_000_000 + i)
                t0 = time.perf_counter()
                response = c.post("/v1/tokenize", json={"pan": pan, "format": "pan_bin6_last4"})
                mine.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    errors[0] += 1
                i += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p90_ms": latencies[int(len(latencies) * 0.90) - 1],
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "errors": errors[0],
    }


def _batch(pki: DevPKI, url: str, rounds: int = 5) -> float:
    with _client(pki, url) as c:
        total, elapsed = 0, 0.0
        for r in range(rounds):
            items = [
                {"pan": _pan(900_000_000 + r * 1000 + i), "format": "pan_bin6_last4"}
                for i in range(1000)
            ]
            t0 = time.perf_counter()
            response = c.post("/v1/tokenize/batch", json={"items": items})
            elapsed += time.perf_counter() - t0
            assert response.status_code == 200, response.text
            total += len(items)
    return total / elapsed


def main(seconds: float, databases: list[str]) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pki = ensure_dev_pki(tmp / "pki")
        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench._servers", "bare", str(pki.root), str(port)]
        )
        try:
            _wait(pki, f"https://127.0.0.1:{port}", bare)
            results["bare"] = {
                c: _load(pki, f"https://127.0.0.1:{port}", c, seconds, 0) for c in (1, 8, 32)
            }
        finally:
            bare.terminate()
            bare.wait()
        for database in databases:
            results[database] = _run_vault(tmp, pki, database, seconds)
    _report(results, databases)
    return results


def _run_vault(tmp: Path, pki: DevPKI, database: str, seconds: float) -> dict[str, object]:
    work = tmp / database
    work.mkdir()
    conf = bench_token(work)
    policy = work / "policy.toml"
    policy.write_text(LOAD_POLICY)
    cluster = None
    url_line = ""
    if database == "postgresql":
        cluster = PostgresCluster.create(durable=True)
        cluster.start()
        url_line = f'[database]\nurl = "{cluster.sqlalchemy_url()}"\npool_size = 40\n'
    port = free_port()
    config = work / "cofre.toml"
    config.write_text(
        f'data_dir = "{work}"\npolicy_file = "{policy}"\n{url_line}'
        f'[hsm]\ntoken_label = "bench"\npin_file = "{work / "pin"}"\nsofthsm_conf = "{conf}"\n'
        f'[server]\nport = {port}\nca_bundle = "{pki.ca}"\ncert_file = "{pki.server_cert}"\n'
        f'key_file = "{pki.server_key}"\n'
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import os,sys; os.environ['COFRE_CONFIG']=sys.argv[1];"
            "from cofre.settings import load_settings; from cofre_cli.wiring import open_hsm;"
            "from hsm.keys import KeyHierarchy; KeyHierarchy(open_hsm(load_settings()))"
            ".initialize()",
            str(config),
        ],
        check=True,
    )
    server = subprocess.Popen([sys.executable, "-m", "bench._servers", "vault", str(config)])
    url = f"https://127.0.0.1:{port}"
    try:
        _wait(pki, url, server)
        out: dict[str, object] = {
            c: _load(pki, url, c, seconds, c * 10_000_000) for c in (1, 8, 32)
        }
        out["batch_pans_per_s"] = _batch(pki, url)
    finally:
        server.terminate()
        server.wait()
        if cluster is not None:
            cluster.destroy()
    return out


def _report(results: dict[str, object], databases: list[str]) -> None:
    bare = results["bare"]
    print("single tokenize over mTLS (keep-alive clients):")
    print(f"{'server':<12} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}")
    for name in ["bare", *databases]:
        data = results[name]
        for clients in (1, 8, 32):
            row = data[clients]  # type: ignore[index]
            ratio = row["req_per_s"] / bare[clients]["req_per_s"]  # type: ignore[index]
            print(
                f"{name:<12} {clients:>7} {row['req_per_s']:>9,.0f} {row['p50_ms']:>8.1f} "
                f"{row['p99_ms']:>8.1f} {ratio:>7.0%}"
            )
    for name in databases:
        print(
            f"batch tokenize on {name}: "
            f"{results[name]['batch_pans_per_s']:,.0f} PANs/s (goal >= 20,000)"
        )  # type: ignore[index]
    print("goals: vault >= 50% of bare req/s; p99 <= 25 ms at 32 clients")


def plot(results: dict[str, object], databases: list[str], out: Path) -> None:
    """p50/p90/p99 latency and req/s against clients, one line per server, as a PNG."""
    # Imported here: only the plot needs matplotlib, and Agg draws with no display.
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    clients = [1, 8, 32]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4), constrained_layout=True)
    for name in ["bare", *databases]:
        rows = [results[name][c] for c in clients]  # type: ignore[index]
        label = "bare FastAPI" if name == "bare" else f"vault, {name}"
        for axis, key in zip(axes, ["p50_ms", "p90_ms", "p99_ms", "req_per_s"], strict=True):
            axis.plot(clients, [r[key] for r in rows], marker="o", label=label)
    for axis, title in zip(
        axes, ["p50 latency", "p90 latency", "p99 latency", "throughput"], strict=True
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("req/s" if title == "throughput" else "ms")
        axis.set_title(f"tokenize over mTLS: {title}")
        axis.grid(visible=True, alpha=0.3)
    axes[2].axhline(25, color="grey", linestyle="--", label="p99 goal (25 ms)")
    axes[2].legend()
    figure.savefig(out, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the latency plot (PNG) here")
    args = parser.parse_args()
    out = main(args.seconds, args.databases.split(","))
    if args.plot:
        plot(out, args.databases.split(","), args.plot)
        print(f"latency plot: {args.plot.name}")
    if args.json:
        print(json.dumps(out, default=str))
