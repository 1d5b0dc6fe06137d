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
batch PANs/s >= 6x bare's single req/s. The bare server stays up through the vault's
runs, and bare is measured again at 32 connections just before and just after each of
those 32-connection figures: each goal compares with the mean of that pair (the batch
with its database's pairs), since the machine's speed moves over a run's ten minutes
(the single tokenize line read 40-66% across clean-clone runs of the same code).

Run: .venv/bin/python -m bench.api [--seconds 10] [--databases sqlite,postgresql]
     [--plot latency.png] [--profile DIR]
     .venv/bin/python -m bench.api --batch-only [--seconds 20] [--profile DIR]
         (only the batch load, with its CPU milliseconds per PAN: for iterating on it)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from api.pki import DevPKI, ensure_dev_pki
from bench._load import MTLSProxy, Result, cpu_seconds, descendants, wrk
from bench._profile import summarize
from bench._report import BATCH_CONNECTIONS, CONNECTIONS, as_json, plot, report, report_batch
from bench._setup import LOAD_POLICY, bench_token
from tests.support.postgres import PostgresCluster, free_port
from vault.pan import luhn_check_digit


def _pan(i: int) -> str:
    """Card `i` (below 10^14), spread over BINs as `bench/wrk/pan.lua`'s are."""
    body = "5" + f"{i % 10**8:08d}"[::-1] + f"{i // 10**8:06d}"
    return body + luhn_check_digit(body)


def _client(pki: DevPKI, url: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert("payments")), str(pki.client_key("payments")))
    return httpx.Client(base_url=url, verify=context, timeout=60)


def _wait(
    pki: DevPKI, url: str, process: subprocess.Popen[bytes], ready: str | None = None
) -> None:
    """Until the server answers a tokenize, and then, given the health listener's
    `ready` URL, until it answers 200: the node's readiness, every worker serving (what
    an orchestrator waits for before sending traffic). Without it the load began while a
    second worker was still opening its HSM session, and its connections all went to
    the first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("server process exited during start-up")
        try:
            with _client(pki, url) as c:
                c.post("/v1/tokenize", json={"pan": _pan(0), "format": "pan_bin6_last4"})
            if ready is None or httpx.get(ready, timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


def _ready_url(config: Path) -> str:
    """The node's /readyz on the health port `_vault_config` set."""
    port = config.read_text().split("health_port = ")[1].split()[0]
    return f"http://127.0.0.1:{port}/readyz"


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _bare_server(pki: DevPKI, kind: str) -> Iterator[MTLSProxy]:
    """A bare server of `kind` (`bench._servers`) behind its haproxy, warmed up."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", kind, str(pki.root), str(port)]
    )
    proxy = None
    try:
        _wait(pki, f"https://127.0.0.1:{port}", server)
        proxy = MTLSProxy(pki, port)
        wrk(proxy, "tokenize", connections=8, seconds=1, args=["900000"])  # warm-up
        yield proxy
    finally:
        if proxy is not None:
            proxy.close()
        _stop(server)


def _bare_levels(proxy: MTLSProxy, levels: tuple[int, ...], seconds: float) -> dict[int, Result]:
    return {
        c: wrk(proxy, "tokenize", connections=c, seconds=seconds, args=[str(c * 1000)])
        for c in levels
    }


def _bare(pki: DevPKI, kind: str, seconds: float) -> dict[int, Result]:
    with _bare_server(pki, kind) as proxy:
        return _bare_levels(proxy, CONNECTIONS if kind == "bare" else (32,), seconds)


def _vault_config(work: Path, pki: DevPKI, port: int, url_line: str) -> Path:
    conf = bench_token(work)
    policy = work / "policy.toml"
    policy.write_text(LOAD_POLICY)
    config = work / "cofre.toml"
    config.write_text(
        f'data_dir = "{work}"\npolicy_file = "{policy}"\nlog_level = "WARNING"\n{url_line}'
        f'[hsm]\ntoken_label = "bench"\npin_file = "{work / "pin"}"\nsofthsm_conf = "{conf}"\n'
        f'[server]\nport = {port}\nca_bundle = "{pki.ca}"\ncert_file = "{pki.server_cert}"\n'
        f'key_file = "{pki.server_key}"\nhealth_port = {free_port()}\n'
    )
    (work / "pin").chmod(0o600)
    return config


def _cofre(
    config: Path, *argv: str, extra_env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **(extra_env or {}),
        "COFRE_CONFIG": str(config),
        # Production checks refuse SQLite, the dev PKI and SoftHSM2; the bench allows them.
        **{f"COFRE_INSECURE__ALLOW_{n}": "true" for n in ("SQLITE", "DEV_PKI", "SOFTWARE_HSM")},
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


# py-spy's sampling mode: GIL-holding samples (the default), or every running thread with
# its C frames (`--native-profile`: where the CPU goes outside Python too).
_SPY_MODE = ["--gil"]


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
                        *_SPY_MODE,
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
    # Not multiprocessing's resource tracker: only the workers serve.
    workers = [
        p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    return workers or [server.pid]


def _worker_cpu(server: subprocess.Popen[bytes]) -> dict[int, float]:
    """CPU seconds so far of each worker process of `server`."""
    return {pid: cpu_seconds([pid]) for pid in _workers(server)}


def _split(before: dict[int, float], after: dict[int, float]) -> list[int]:
    """Each worker's share (%) of the CPU its node's workers spent between two
    `_worker_cpu` readings: how evenly the node spread the load (`api.balance`)."""
    spent = [after[pid] - before.get(pid, 0.0) for pid in sorted(after)]
    total = sum(spent) or 1.0
    return [round(100 * part / total) for part in spent]


_T = TypeVar("_T")


def _spread(server: subprocess.Popen[bytes], run: Callable[[], _T]) -> tuple[_T, list[int]]:
    """`run()`'s result, and each worker's share of the CPU the workers spent in it."""
    before = _worker_cpu(server)
    result = run()
    return result, _split(before, _worker_cpu(server))


def _postgres_pids(cluster: PostgresCluster | None) -> list[int]:
    if cluster is None:
        return []
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return descendants(postmaster)


def _with_cpu(
    servers: list[subprocess.Popen[bytes]],
    cluster: PostgresCluster | None,
    load: Callable[[], Result],
) -> tuple[Result, float, float]:
    """Run `load`; return its result and the CPU milliseconds per request the vault
    processes (every worker) and PostgreSQL (every backend) spent on it. CPU time per
    request barely moves with the machine's other load, unlike req/s."""
    vault_pids = [p for s in servers for p in descendants(s.pid)]
    db_before, vault_before = cpu_seconds(_postgres_pids(cluster)), cpu_seconds(vault_pids)
    result = load()
    vault_after = cpu_seconds([p for s in servers for p in descendants(s.pid)])
    db_after = cpu_seconds(_postgres_pids(cluster))
    requests = max(1.0, result.req_per_s * result.seconds)
    return (
        result,
        (vault_after - vault_before) * 1000 / requests,
        (db_after - db_before) * 1000 / requests,
    )


def _profiled(
    server: subprocess.Popen[bytes], proxy: MTLSProxy, where: Path, seconds: float
) -> list[str]:
    """py-spy on every worker during a tokenize load at 32 connections; the summary."""
    shutil.rmtree(where, ignore_errors=True)  # only this run's profiles are summarised
    where.mkdir(parents=True)
    spies = _profile(_workers(server), where, int(seconds))
    wrk(proxy, "tokenize", connections=32, seconds=seconds, args=["700000"])
    for spy in spies:
        spy.wait()
    return [line for raw in sorted(where.glob("*.txt")) for line in summarize(raw, int(seconds))]


def _batch(
    server: subprocess.Popen[bytes],
    cluster: PostgresCluster | None,
    proxy: MTLSProxy,
    seconds: float,
    offset: int,
) -> tuple[Result, float, float]:
    """Batch tokenize at `BATCH_CONNECTIONS`; the result and the CPU milliseconds per
    PAN of the vault's processes and of PostgreSQL's."""
    result, vault_ms, db_ms = _with_cpu(
        [server],
        cluster,
        lambda: wrk(
            proxy,
            "batch",
            connections=BATCH_CONNECTIONS,
            # A batch takes seconds on a loaded machine: long enough for several.
            seconds=max(2 * seconds, 20),
            args=[str(offset)],
            timeout_s=60,
        ),
    )
    return result, vault_ms / 1000, db_ms / 1000


def _batch_profiled(
    server: subprocess.Popen[bytes], proxy: MTLSProxy, where: Path, seconds: float
) -> list[str]:
    """py-spy on every worker during the batch load; the summary."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    spies = _profile(_workers(server), where, int(seconds))
    wrk(proxy, "batch", connections=BATCH_CONNECTIONS, seconds=seconds, args=["300000"])
    for spy in spies:
        spy.wait()
    return [line for raw in sorted(where.glob("*.txt")) for line in summarize(raw, int(seconds))]


def _batch_run(
    server: subprocess.Popen[bytes],
    cluster: PostgresCluster | None,
    proxy: MTLSProxy,
    seconds: float,
    profile: Path | None,
) -> dict[str, Any]:
    """`--batch-only`: a warm-up, the profile if asked, then the measured batch load."""
    wrk(proxy, "batch", connections=BATCH_CONNECTIONS, seconds=4, args=["400000"])
    out: dict[str, Any] = {}
    if profile is not None:
        out["profile"] = _batch_profiled(server, proxy, profile, seconds)
    (batch, vault_pan_ms, db_pan_ms), split = _spread(
        server, lambda: _batch(server, cluster, proxy, seconds, 500000)
    )
    out["split"] = {"batch": split}
    return out | {"batch": batch, "batch_cpu_ms": (vault_pan_ms, db_pan_ms)}


def _bracketed(
    into: dict[str, list[Result]],
    load: str,
    reference: Callable[[], Result] | None,
    run: Callable[[], _T],
) -> _T:
    """`run()`, with the bare `reference` measured just before and just after it (into
    `into[load]`) when there is one."""
    if reference is None:
        return run()
    before = reference()
    result = run()
    into[load] = [before, reference()]
    return result


def _at_32(
    out: dict[str, Any],
    load: str,
    *,
    server: subprocess.Popen[bytes],
    cluster: PostgresCluster | None,
    reference: Callable[[], Result] | None,
    run: Callable[[], Result],
) -> None:
    """`load` at 32 connections (`run`), the figure the goals compare, into `out`: its
    result, CPU per request, the workers' split of it and, with a `reference`, bare's
    runs just before and after it."""
    (top, vault_ms, db_ms), split = _spread(
        server,
        lambda: _bracketed(
            out.setdefault("bracket", {}),
            load,
            reference,
            lambda: _with_cpu([server], cluster, run),
        ),
    )
    out[load][32] = top
    out.setdefault("split", {})[load] = split
    out.setdefault("cpu_ms", {})[load] = (vault_ms, db_ms)


def _run_vault(
    tmp: Path,
    pki: DevPKI,
    database: str,
    seconds: float,
    profile: Path | None,
    *,
    batch_only: bool = False,
    reference: Callable[[], Result] | None = None,
) -> dict[str, Any]:
    """The vault's figures on `database`. With `reference` (bare at 32 connections), bare
    is measured again just before and just after each 32-connection figure the goals
    compare (`out["bracket"]`), so each ratio compares the two servers on the machine
    as it was at that minute, not as it was when the run began."""
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
        _wait(pki, url, server, _ready_url(config))
        proxy = MTLSProxy(pki, port)
        wrk(proxy, "tokenize", connections=8, seconds=2, args=["800000"])  # warm-up
        out: dict[str, Any] = {"workers": len(_workers(server))}
        if batch_only:
            where = None if profile is None else profile / database
            return out | _batch_run(server, cluster, proxy, seconds, where)
        if profile is not None:
            out["profile"] = _profiled(server, proxy, profile / database, seconds)
        running = proxy

        def tokenize(c: int) -> Result:
            return wrk(running, "tokenize", connections=c, seconds=seconds, args=[str(c * 1000)])

        out["tokenize"] = {c: tokenize(c) for c in CONNECTIONS[:-1]}
        _at_32(
            out,
            "tokenize",
            server=server,
            cluster=cluster,
            reference=reference,
            run=lambda: tokenize(32),
        )
        tokens = work / "tokens.txt"
        _tokens_for_detokenize(pki, url, tokens)

        def detokenize(c: int) -> Result:
            return wrk(running, "detokenize", connections=c, seconds=seconds, args=[str(tokens)])

        out["detokenize"] = {c: detokenize(c) for c in CONNECTIONS[:-1]}
        _at_32(
            out,
            "detokenize",
            server=server,
            cluster=cluster,
            reference=reference,
            run=lambda: detokenize(32),
        )
        (batch, vault_pan_ms, db_pan_ms), out["split"]["batch"] = _spread(
            server, lambda: _batch(server, cluster, proxy, seconds, 500000)
        )
        out["batch"], out["batch_cpu_ms"] = batch, (vault_pan_ms, db_pan_ms)
        return out
    finally:
        if proxy is not None:
            proxy.close()
        if server is not None:
            _stop(server)
        if cluster is not None:
            cluster.destroy()


def _scale_out(tmp: Path, pki: DevPKI, seconds: float, nodes: int = 3) -> dict[int, Any]:
    """One node, then `nodes` nodes (one worker process each) on one PostgreSQL and one
    token, haproxy spreading the 32 connections round robin: aggregate req/s and the
    CPU milliseconds per tokenize of the vault processes and of PostgreSQL."""
    work = tmp / "scale-out"
    work.mkdir()
    cluster = PostgresCluster.create(durable=True)
    cluster.start()
    url_line = f'[database]\nurl = "{cluster.sqlalchemy_url()}"\npool_size = 20\n'
    one_worker = {"COFRE_SERVER__WORKERS": "1"}
    configs = []
    for n in range(nodes):
        node = work / f"node{n}"
        node.mkdir()
        config = _vault_config(node, pki, free_port(), url_line)
        if n:  # every node uses node 0's token (one HSM for the cluster)
            text = config.read_text().replace(str(node / "pin"), str(work / "node0" / "pin"))
            text = text.replace(str(node / "softhsm2.conf"), str(work / "node0" / "softhsm2.conf"))
            config.write_text(text)
        configs.append(config)
    servers: list[subprocess.Popen[bytes]] = []
    out: dict[int, Any] = {}
    try:
        for step in (["db", "migrate"], ["hsm", "init"]):
            if _cofre(configs[0], *step, stdout=subprocess.DEVNULL).wait() != 0:
                raise SystemExit(f"cofre {' '.join(step)} failed")
        ports = [int(c.read_text().split("port = ")[1].split()[0]) for c in configs]
        for count in (1, nodes):
            while len(servers) < count:
                config = configs[len(servers)]
                servers.append(_cofre(config, "serve", extra_env=one_worker))
                _wait(
                    pki,
                    f"https://127.0.0.1:{ports[len(servers) - 1]}",
                    servers[-1],
                    _ready_url(config),
                )
            proxy = MTLSProxy(pki, ports[0], more_ports=tuple(ports[1:count]))
            try:
                wrk(proxy, "tokenize", connections=8, seconds=2, args=[str(600000 + count)])
                out[count] = _with_cpu(
                    servers,
                    cluster,
                    functools.partial(
                        wrk,
                        proxy,
                        "tokenize",
                        connections=32,
                        seconds=seconds,
                        args=[str(500000 + count * 1000)],
                    ),
                )
            finally:
                proxy.close()
    finally:
        for server in servers:
            _stop(server)
        cluster.destroy()
    return out


def main(
    seconds: float, databases: list[str], profile: Path | None, *, batch_only: bool = False
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pki = ensure_dev_pki(tmp / "pki")
        if batch_only:
            for database in databases:
                results[database] = _run_vault(
                    tmp, pki, database, seconds, profile, batch_only=True
                )
            report_batch(results, databases)
            return results
        results["bare-cofre"] = _bare(pki, "bare-cofre", seconds)
        # The reference stays up (idle between its runs) to bracket the vault's figures.
        with _bare_server(pki, "bare") as bare:
            results["bare"] = _bare_levels(bare, CONNECTIONS, seconds)
            reference = functools.partial(
                wrk, bare, "tokenize", connections=32, seconds=seconds, args=["950000"]
            )
            for database in databases:
                results[database] = _run_vault(
                    tmp, pki, database, seconds, profile, reference=reference
                )
        if "postgresql" in databases:
            results["scale-out"] = _scale_out(tmp, pki, seconds)
    report(results, databases, seconds)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the latency plot (PNG) here")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the workers here")
    parser.add_argument(
        "--batch-only", action="store_true", help="only the batch load and its CPU per PAN"
    )
    parser.add_argument(
        "--native-profile",
        action="store_true",
        help="profile every running thread with its C frames instead of GIL samples",
    )
    args = parser.parse_args()
    if args.native_profile:
        _SPY_MODE[:] = ["--native"]
    dbs = args.databases.split(",")
    result = main(args.seconds, dbs, args.profile, batch_only=args.batch_only)
    if args.plot and not args.batch_only:
        plot(result, dbs, args.plot)
        print(f"latency plot: {args.plot.name}")
    if args.json:
        print(as_json(result))
