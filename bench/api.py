"""API throughput over real mutual TLS, loaded from native code (issue 21).

wrk sends plain HTTP to a loopback haproxy that originates mutual TLS with the
``payments`` certificate over keep-alive connections (`bench._load`). Measured in the
same run, behind the same haproxy set-up:

- ``bare``: a bare FastAPI endpoint, uvicorn with httptools + uvloop, one process,
  client certificate required (the reference every ratio is taken against);
- ``bare-cofre``: the same endpoint on Cofre's own uvicorn set-up (`api.server`);
- the vault as production runs it (`cofre serve`, its default worker count), on SQLite
  and on a throwaway PostgreSQL cluster with fsync on: single tokenize (a fresh
  Luhn-valid PAN per request) and detokenize (tokens created beforehand) at 1, 8 and 32
  connections, and batch tokenize (1,000 per request).

Goals (issue 21), printed with the measured ratio and PASS/FAIL; never a CI gate:
tokenize and detokenize at 32 connections >= 50% of bare's req/s with p99 <= 2x bare's;
batch PANs/s >= 6x bare's single req/s.

Run: .venv/bin/python -m bench.api [--seconds 10] [--databases sqlite,postgresql]
     [--plot latency.png] [--profile DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.pki import DevPKI, ensure_dev_pki
from bench._load import MTLSProxy, Result, wrk
from bench._setup import LOAD_POLICY, bench_token
from tests.support.postgres import PostgresCluster, free_port
from vault.pan import luhn_check_digit

CONNECTIONS = (1, 8, 32)
BATCH_CONNECTIONS = 4
GOAL_SHARE = 0.5
GOAL_P99 = 2.0
GOAL_BATCH = 6.0


def _pan(i: int) -> str:
    body = f"5{i:014d}"
    return body + luhn_check_digit(body)


def _client(pki: DevPKI, url: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert("payments")), str(pki.client_key("payments")))
    return httpx.Client(base_url=url, verify=context, timeout=60)


def _wait(pki: DevPKI, url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("server process exited during start-up")
        try:
            with _client(pki, url) as c:
                c.post("/v1/tokenize", json={"pan": _pan(0), "format": "pan_bin6_last4"})
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit("server did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _bare(tmp: Path, pki: DevPKI, kind: str, seconds: float) -> dict[int, Result]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", kind, str(pki.root), str(port)]
    )
    proxy = None
    try:
        _wait(pki, f"https://127.0.0.1:{port}", server)
        proxy = MTLSProxy(pki, port)
        wrk(proxy, "tokenize", connections=8, seconds=1, args=["900000"])  # warm-up
        levels = CONNECTIONS if kind == "bare" else (32,)
        return {
            c: wrk(proxy, "tokenize", connections=c, seconds=seconds, args=[str(c * 1000)])
            for c in levels
        }
    finally:
        if proxy is not None:
            proxy.close()
        _stop(server)


def _vault_config(work: Path, pki: DevPKI, port: int, url_line: str) -> Path:
    conf = bench_token(work)
    policy = work / "policy.toml"
    policy.write_text(LOAD_POLICY)
    config = work / "cofre.toml"
    config.write_text(
        f'data_dir = "{work}"\npolicy_file = "{policy}"\nlog_level = "WARNING"\n{url_line}'
        f'[hsm]\ntoken_label = "bench"\npin_file = "{work / "pin"}"\nsofthsm_conf = "{conf}"\n'
        f'[server]\nport = {port}\nca_bundle = "{pki.ca}"\ncert_file = "{pki.server_cert}"\n'
        f'key_file = "{pki.server_key}"\n'
    )
    (work / "pin").chmod(0o600)
    return config


def _cofre(config: Path, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "COFRE_CONFIG": str(config),
        # Production checks refuse SQLite and the dev PKI; the bench allows both, loudly.
        "COFRE_INSECURE__ALLOW_SQLITE": "true",
        "COFRE_INSECURE__ALLOW_DEV_PKI": "true",
    }
    return subprocess.Popen([sys.executable, "-m", "cofre_cli", *argv], env=env, **kwargs)


def _tokens_for_detokenize(pki: DevPKI, url: str, path: Path, count: int = 5000) -> None:
    tokens: list[str] = []
    with _client(pki, url) as c:
        for r in range(count // 1000):
            items = [
                {"pan": _pan(800_000_000 + r * 1000 + i), "format": "pan_bin6_last4"}
                for i in range(1000)
            ]
            response = c.post("/v1/tokenize/batch", json={"items": items})
            assert response.status_code == 200, response.text
            tokens += [item["token"] for item in response.json()["results"]]
    path.write_text("\n".join(tokens) + "\n")


def _profile(pids: list[int], out: Path, seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on every worker for `seconds`, GIL-holding samples, raw and speedscope."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    started = []
    for pid in pids:
        for fmt, ext in (("raw", "txt"), ("speedscope", "json")):
            started.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--gil",
                        "-r",
                        "250",
                        "-d",
                        str(seconds),
                        "-f",
                        fmt,
                        "-p",
                        str(pid),
                        "-o",
                        str(out / f"{out.name}-{pid}.{ext}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    return started


def _workers(server: subprocess.Popen[bytes]) -> list[int]:
    """The pids serving: the worker children of `cofre serve`, or itself."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return pids or [server.pid]


def _run_vault(
    tmp: Path, pki: DevPKI, database: str, seconds: float, profile: Path | None
) -> dict[str, Any]:
    work = tmp / database
    work.mkdir()
    cluster = None
    url_line = ""
    if database == "postgresql":
        cluster = PostgresCluster.create(durable=True)  # fsync on: durability is measured
        cluster.start()
        url_line = f'[database]\nurl = "{cluster.sqlalchemy_url()}"\npool_size = 20\n'
    port = free_port()
    config = _vault_config(work, pki, port, url_line)
    proxy = None
    server = None
    try:
        for step in (["db", "migrate"], ["hsm", "init"]):
            done = _cofre(config, *step, stdout=subprocess.DEVNULL)
            if done.wait() != 0:
                raise SystemExit(f"cofre {' '.join(step)} failed")
        server = _cofre(config, "serve")
        url = f"https://127.0.0.1:{port}"
        _wait(pki, url, server)
        proxy = MTLSProxy(pki, port)
        wrk(proxy, "tokenize", connections=8, seconds=2, args=["800000"])  # warm-up
        out: dict[str, Any] = {"workers": len(_workers(server))}
        if profile is not None:
            where = profile / database
            where.mkdir(parents=True, exist_ok=True)
            spies = _profile(_workers(server), where, int(seconds))
            wrk(proxy, "tokenize", connections=32, seconds=seconds, args=["700000"])
            for spy in spies:
                spy.wait()
        out["tokenize"] = {
            c: wrk(proxy, "tokenize", connections=c, seconds=seconds, args=[str(c * 1000)])
            for c in CONNECTIONS
        }
        tokens = work / "tokens.txt"
        _tokens_for_detokenize(pki, url, tokens)
        out["detokenize"] = {
            c: wrk(proxy, "detokenize", connections=c, seconds=seconds, args=[str(tokens)])
            for c in CONNECTIONS
        }
        out["batch"] = wrk(
            proxy,
            "batch",
            connections=BATCH_CONNECTIONS,
            seconds=seconds,
            args=["500000"],
            timeout_s=60,
        )
        return out
    finally:
        if proxy is not None:
            proxy.close()
        if server is not None:
            _stop(server)
        if cluster is not None:
            cluster.destroy()


def main(seconds: float, databases: list[str], profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pki = ensure_dev_pki(tmp / "pki")
        results["bare"] = _bare(tmp, pki, "bare", seconds)
        results["bare-cofre"] = _bare(tmp, pki, "bare-cofre", seconds)
        for database in databases:
            results[database] = _run_vault(tmp, pki, database, seconds, profile)
    _report(results, databases, seconds)
    return results


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _report(results: dict[str, Any], databases: list[str], seconds: float) -> None:
    bare: dict[int, Result] = results["bare"]
    print(
        f"wrk -> haproxy (mTLS as payments, http-reuse always, 1 thread) -> server; "
        f"{seconds:g} s per figure"
    )
    print(
        f"{'server':<24} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'vs bare':>7} {'errors':>6} {'tls conns':>9}"
    )

    def row(name: str, r: Result) -> None:
        share = r.req_per_s / bare[r.connections].req_per_s
        print(
            f"{name:<24} {r.connections:>5} {r.req_per_s:>8,.0f} {r.p50_ms:>7.1f} "
            f"{r.p99_ms:>7.1f} {share:>7.0%} {r.errors:>6} {r.server_connections:>9}"
        )

    for r in bare.values():
        row("bare httptools+uvloop", r)
    for r in results["bare-cofre"].values():
        row("bare, Cofre's set-up", r)
    for name in databases:
        data = results[name]
        for op in ("tokenize", "detokenize"):
            for r in data[op].values():
                row(f"{name} {op}", r)
    print()
    for name in databases:
        data = results[name]
        batch: Result = data["batch"]
        print(
            f"{name}: cofre serve with {data['workers']} worker(s); batch tokenize "
            f"{BATCH_CONNECTIONS} conns: {batch.req_per_s * 1000:,.0f} PANs/s, "
            f"p99 {batch.p99_ms:.0f} ms, errors {batch.errors}"
        )
    print("\ngoals (issue 21), ratios against bare measured in this run:")
    ref = bare[32]
    for name in databases:
        data = results[name]
        for op in ("tokenize", "detokenize"):
            r: Result = data[op][32]
            share = r.req_per_s / ref.req_per_s
            p99 = r.p99_ms / ref.p99_ms
            print(
                f"  {op:<10} {name:<10} 32 conns: {r.req_per_s:,.0f} req/s = {share:.0%} "
                f"of bare {ref.req_per_s:,.0f} (goal >= 50%) {_verdict(share >= GOAL_SHARE)}"
            )
            print(
                f"  {op:<10} {name:<10} 32 conns: p99 {r.p99_ms:.1f} ms = {p99:.2f}x "
                f"bare's {ref.p99_ms:.1f} ms (goal <= 2x) {_verdict(p99 <= GOAL_P99)}"
            )
        batch = data["batch"]
        times = batch.req_per_s * 1000 / ref.req_per_s
        print(
            f"  batch      {name:<10} {batch.req_per_s * 1000:,.0f} PANs/s = {times:.1f}x "
            f"bare's single req/s (goal >= 6x) {_verdict(times >= GOAL_BATCH)}"
        )
    errors = sum(
        r.errors
        for name in databases
        for op in ("tokenize", "detokenize")
        for r in results[name][op].values()
    )
    print(f"  failed requests in the vault runs: {errors}")


def plot(results: dict[str, Any], databases: list[str], out: Path) -> None:
    """p50/p99 latency and req/s against connections, tokenize and detokenize, PNG."""
    # Imported here: only the plot needs matplotlib, and Agg draws with no display.
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    series: list[tuple[str, dict[int, Result], str]] = [
        ("bare FastAPI (httptools+uvloop)", results["bare"], "-")
    ]
    for name in databases:
        series.append((f"vault {name} tokenize", results[name]["tokenize"], "-"))
        series.append((f"vault {name} detokenize", results[name]["detokenize"], "--"))
    for label, data, style in series:
        xs = sorted(data)
        for axis, key in zip(axes, ["p50_ms", "p99_ms", "req_per_s"], strict=True):
            axis.plot(xs, [getattr(data[c], key) for c in xs], style, marker="o", label=label)
    for axis, title in zip(axes, ["p50 latency", "p99 latency", "throughput"], strict=True):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONNECTIONS), [str(c) for c in CONNECTIONS])
        axis.set_xlabel("connections (wrk -> haproxy mTLS)")
        axis.set_ylabel("req/s" if title == "throughput" else "ms")
        axis.set_title(title)
        axis.grid(visible=True, alpha=0.3)
    axes[2].legend(fontsize=8)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _json(results: dict[str, Any]) -> str:
    def default(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return str(value)

    return json.dumps(results, default=default)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the latency plot (PNG) here")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the workers here")
    args = parser.parse_args()
    dbs = args.databases.split(",")
    result = main(args.seconds, dbs, args.profile)
    if args.plot:
        plot(result, dbs, args.plot)
        print(f"latency plot: {args.plot.name}")
    if args.json:
        print(_json(result))
