"""bench/api.py's report: the figures table, the CPU costs and profile summaries, the
goal lines (issue 21) and the latency plot, from the results `bench.api.main` gathered.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bench._load import Result

CONNECTIONS = (1, 8, 32)
BATCH_CONNECTIONS = 4
GOAL_SHARE = 0.5
GOAL_P99 = 2.0
GOAL_BATCH = 6.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict[str, Any], databases: list[str], seconds: float) -> None:
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
    _report_costs(results, databases)
    print(
        "\ngoals (issue 21), ratios against bare measured in this run (each single-call "
        "line against bare's runs just before and just after it, averaged):"
    )
    ref = bare[32]
    for name in databases:
        data = results[name]
        for op in ("tokenize", "detokenize"):
            figure: Result = data[op][32]
            around = data.get("bracket", {}).get(op, [])
            rate, tail = _reference(around, ref)
            share = figure.req_per_s / rate
            p99 = figure.p99_ms / tail
            print(
                f"  {op:<10} {name:<10} 32 conns: {figure.req_per_s:,.0f} req/s = {share:.0%} "
                f"of bare {rate:,.0f} (goal >= 50%) {_verdict(share >= GOAL_SHARE)}"
            )
            print(
                f"  {op:<10} {name:<10} 32 conns: p99 {figure.p99_ms:.1f} ms = {p99:.2f}x "
                f"bare's {tail:.1f} ms (goal <= 2x) {_verdict(p99 <= GOAL_P99)}"
            )
            if around:
                print(
                    f"  {'':<10} {name:<10} bare just before and after: "
                    + ", ".join(f"{b.req_per_s:,.0f} req/s p99 {b.p99_ms:.1f} ms" for b in around)
                    + f" (at the run's start: {ref.req_per_s:,.0f}, p99 {ref.p99_ms:.1f} ms)"
                )
        batch = data["batch"]
        # Against bare's runs around this database's single-call figures, the nearest.
        single, _ = _reference([b for runs in data.get("bracket", {}).values() for b in runs], ref)
        times = batch.req_per_s * 1000 / single
        print(
            f"  batch      {name:<10} {batch.req_per_s * 1000:,.0f} PANs/s = {times:.1f}x "
            f"bare's single req/s (goal >= 6x) {_verdict(times >= GOAL_BATCH)}"
        )
        # What the goal leaves per PAN on this machine, whatever the levers: every core
        # busy with nothing but the vault and its database (the load generator and
        # haproxy take their share too, so the real budget is smaller).
        cores = len(os.sched_getaffinity(0))
        budget = cores * 1000 / (GOAL_BATCH * single)
        vault_ms, db_ms = data["batch_cpu_ms"]
        print(
            f"  {'':<10} {name:<10} 6x is {GOAL_BATCH * single:,.0f} PANs/s: at most "
            f"{budget:.3f} ms of CPU per PAN on {cores} cores; this run spent "
            f"{vault_ms + db_ms:.3f} (vault {vault_ms:.3f} + db {db_ms:.3f})"
        )
    errors = sum(
        r.errors
        for name in databases
        for op in ("tokenize", "detokenize")
        for r in results[name][op].values()
    )
    print(f"  failed requests in the vault runs: {errors}")


def _reference(around: list[Result], start: Result) -> tuple[float, float]:
    """Bare's req/s and p99 to compare a figure with: the mean of its runs just before
    and just after the figure when there are some (`bench.api._bracketed`), else the
    run's first measurement at 32 connections."""
    if not around:
        return start.req_per_s, start.p99_ms
    return (
        sum(b.req_per_s for b in around) / len(around),
        sum(b.p99_ms for b in around) / len(around),
    )


def report_batch(results: dict[str, Any], databases: list[str]) -> None:
    for name in databases:
        data = results[name]
        batch: Result = data["batch"]
        vault_ms, db_ms = data["batch_cpu_ms"]
        print(
            f"{name}: {data['workers']} worker(s); batch tokenize {BATCH_CONNECTIONS} conns: "
            f"{batch.req_per_s * 1000:,.0f} PANs/s, errors {batch.errors}; CPU ms per PAN: "
            f"vault {vault_ms:.3f}, db {db_ms:.3f}"
        )
    _report_costs(results, databases)


def _report_costs(results: dict[str, Any], databases: list[str]) -> None:
    for name in databases:
        if "profile" in results[name]:
            load = (
                "batch tokenize" if "cpu_ms" not in results[name] else "tokenize at 32 connections"
            )
            print(f"\npy-spy --gil under {load}, {name}, per worker:")
            for line in results[name]["profile"]:
                print(f"  {line}")
    print("\nCPU per request at 32 connections (ms; vault = every worker, db = PostgreSQL):")
    for name in databases:
        for op, (vault_ms, db_ms) in results[name].get("cpu_ms", {}).items():
            print(f"  {name:<10} {op:<10} vault {vault_ms:6.2f}   db {db_ms:6.2f}")
        vault_ms, db_ms = results[name]["batch_cpu_ms"]
        print(f"  {name:<10} {'batch/PAN':<10} vault {vault_ms:6.3f}   db {db_ms:6.3f}")
    print("\neach worker's share of the vault's CPU (%; an even node is ~100/workers each):")
    for name in databases:
        shares = results[name].get("split", {})
        print(
            f"  {name:<10} "
            + "   ".join(f"{load} {'/'.join(map(str, split))}" for load, split in shares.items())
        )
    if "scale-out" in results:
        print("\nnodes on one PostgreSQL (one worker each), tokenize, 32 connections:")
        print(
            f"  {'nodes':>5} {'req/s':>8} {'p99 ms':>7} {'vault CPU ms/req':>17} "
            f"{'db CPU ms/req':>14} {'errors':>6}"
        )
        for count, (r, vault_ms, db_ms) in results["scale-out"].items():
            print(
                f"  {count:>5} {r.req_per_s:>8,.0f} {r.p99_ms:>7.1f} {vault_ms:>17.2f} "
                f"{db_ms:>14.2f} {r.errors:>6}"
            )
        _, vault_ms, db_ms = results["scale-out"][max(results["scale-out"])]
        print(
            f"  50,000 tokenize/s at that cost: {50_000 * vault_ms / 1000:,.0f} vault cores "
            f"and {50_000 * db_ms / 1000:,.0f} PostgreSQL cores at 100% CPU "
            "(docs/operations.md plans 70%)"
        )


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


def as_json(results: dict[str, Any]) -> str:
    def default(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return str(value)

    return json.dumps(results, default=default)
