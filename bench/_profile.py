"""Where the vault's GIL time goes under load: a summary of py-spy ``--gil -f raw``
profiles (one per worker) by the parts issue 21 names, printed into bench/REPORT.md.
The full profiles (raw and speedscope) stay in the directory given to
``bench.api --profile``."""

from __future__ import annotations

import collections
from pathlib import Path

# A part is the share of GIL-holding samples with any of these frames on the stack.
PARTS: dict[str, tuple[str, ...]] = {
    "group commit (the committer thread's work)": ("_loop vault/storage/groupcommit.py",),
    "event loop: TLS, HTTP protocol, middleware": ("run_forever asyncio/base_events.py",),
    "  HTTP protocol (request/response cycle)": (
        "run_asgi uvicorn/protocols/http/httptools_impl.py",
        "run_asgi uvicorn/protocols/http/h11_impl.py",
    ),
    "  request guard (ids, auth, audit, log, span, metrics)": ("__call__ api/guard.py",),
    "  FastAPI solve_dependencies": ("solve_dependencies fastapi/dependencies/utils.py",),
    # The endpoint's thread (anyio's for a plain def route, the executor's for the hot
    # token routes since issue 21's one-hop change): the hop and the vault call in it.
    "route threads (anyio / executor: hop + vault call)": (
        "run anyio/_backends/_asyncio.py",
        "_worker concurrent/futures/thread.py",
    ),
    "SQLAlchemy statement execution": ("execute sqlalchemy/engine/base.py",),
    "SQLAlchemy expression building": (
        "operate sqlalchemy/sql/elements.py",
        "expect sqlalchemy/sql/coercions.py",
    ),
    "rate limit charge": ("charge_rate vault/limits.py",),
    "oracle guard (watch)": ("watch vault/limits.py",),
    "audit entries (append_many)": ("append_many audit/log.py",),
    "HSM calls (session pool)": ("_run_pooled hsm/session.py",),
    "audit sequencer thread": ("_loop audit/sequencer.py",),
}


def _key(frame: str) -> str:
    name = frame.split(" (", maxsplit=1)[0]
    where = (
        frame.rsplit("(", 1)[-1].split(":", maxsplit=1)[0].rsplit("site-packages/", maxsplit=1)[-1]
    )
    return f"{name} {where}"


def summarize(raw: Path, seconds: float, rate: int = 250) -> list[str]:
    """Lines: GIL-busy share of the wall clock, then each part's share of GIL samples."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for key in {_key(frame) for frame in stack.split(";")}:
            inclusive[key] += n
    if not total:
        return [f"{raw.name}: no samples"]
    lines = [
        f"{raw.name}: {total} GIL samples = GIL held {total / (seconds * rate):.0%} of the time"
    ]
    for part, frames in PARTS.items():
        share = max(inclusive.get(f, 0) for f in frames) / total
        lines.append(f"  {share:6.1%}  {part}")
    return lines
