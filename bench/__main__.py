"""`make bench`: run every bench script, each in its own process, and write
bench/REPORT.md with what they printed (figures, same-run baselines, ratios, goals).

Timings here are information, never a gate: CI does not run this.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLOT = str(HERE / "api_latency.png")
# py-spy profiles of the vault's workers under load (summarised in the report).
PROFILES = str(Path(tempfile.gettempdir()) / "cofre-bench-profiles")
# Hand-written: which levers moved what (issue 21), kept beside the generated figures.
NOTES = HERE / "levers.md"
SCRIPTS = [
    ("FF1 (issue 5)", ["bench.ff1"]),
    ("HSM provider vs bare python-pkcs11 (issue 4)", ["bench.hsm_ops"]),
    ("Audit log (issue 6)", ["bench.audit", "--sizes", "10000,1000000"]),
    ("Vault service in process (issue 7)", ["bench.vault", "--sizes", "10000,1000000"]),
    (
        "API over mutual TLS, loaded from native code (issues 8, 21)",
        ["bench.api", "--seconds", "10", "--plot", PLOT, "--profile", PROFILES],
    ),
    ("Networked HSM: 1 ms per call through the CloudHSM shim (issue 19)", ["bench.hsm_latency"]),
    ("Networked HSM: a batch's fingerprints through the CloudHSM shim", ["bench.hsm_batch"]),
]


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def main() -> int:
    out = HERE / "REPORT.md"
    sections = [
        "# Cofre benchmark report\n",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `make bench` on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Every ratio compares figures measured in the same run.\n",
        f"Load average at the start: {_loadavg()} (the machine may be shared: absolute "
        "figures are noisy, the ratios against the baselines measured in the same run "
        "are what count).\n",
    ]
    failed = 0
    for title, argv in SCRIPTS:
        print(f"== {title}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", *argv], capture_output=True, text=True, check=False
        )
        text = result.stdout.strip()
        print(text, flush=True)
        if result.returncode != 0:
            failed += 1
            text += f"\n(exit {result.returncode})\n{result.stderr[-2000:]}"
        shown = " ".join(str(Path(a).relative_to(HERE.parent)) if a == PLOT else a for a in argv)
        sections.append(f"## {title}\n\n`python -m {shown}`\n\n```\n{text}\n```\n")
        if PLOT in argv and result.returncode == 0:
            sections.append(f"![API latency at 1, 8 and 32 connections]({Path(PLOT).name})\n")
    sections.append(f"Load average at the end: {_loadavg()}\n")
    if NOTES.is_file():
        sections.append(NOTES.read_text(encoding="utf-8"))
    out.write_text("\n".join(sections), encoding="utf-8")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
