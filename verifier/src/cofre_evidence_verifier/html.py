"""A self-contained HTML page of a verification report, for a QSA's browser.

Standalone like the rest of the verifier: no template engine, every value escaped.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

from cofre_evidence_verifier.bundle import read_bundle
from cofre_evidence_verifier.report import Report

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1f24}
h1{font-size:1.6rem} .ok{color:#1a7f37} .fail{color:#cf222e}
table{border-collapse:collapse;width:100%;margin:1rem 0} td,th{border:1px solid #d0d7de;
padding:.35rem .6rem;text-align:left;vertical-align:top} th{background:#f6f8fa}
.badge{display:inline-block;padding:.2rem .7rem;border-radius:1rem;color:#fff;font-weight:600}
.badge.ok{background:#1a7f37} .badge.fail{background:#cf222e}
"""


def _utc(timestamp_ms: object) -> str:
    """A head's signing time as a person reads it (the bundle keeps milliseconds)."""
    if not isinstance(timestamp_ms, int):
        return html.escape(str(timestamp_ms))
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_html(report: Report, bundle: Path) -> str:
    """The page: verdict, summary, checks and problems, the tree-head timeline, key
    events, and the requirements map from the bundle."""
    e = html.escape
    verdict = "VERIFIED" if report.ok else "FAILED"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Cofre evidence: "
        f"{verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Cofre evidence bundle <span class='badge {'ok' if report.ok else 'fail'}'>"
        f"{verdict}</span></h1><p>{e(bundle.name)}</p>",
        "<h2>Summary</h2><table>",
    ]
    for key, value in report.summary.items():
        parts.append(f"<tr><th>{e(key)}</th><td>{e(json.dumps(value))}</td></tr>")
    parts.append("</table><h2>Checks</h2><ul>")
    parts += [f"<li class='ok'>&#10003; {e(c)}</li>" for c in report.checks]
    parts += [f"<li class='fail'>&#10007; {e(p)}</li>" for p in report.problems]
    if not report.problems:
        parts += [
            f"<li class='fail'>&#10007; the {e(c)} check did not run to a verdict</li>"
            for c in report.missing_checks()
        ]
    parts.append("</ul>")
    try:
        files = read_bundle(bundle)
    except (OSError, ValueError):
        files = {}
    heads = [
        json.loads(line)
        for line in files.get("audit/heads.jsonl", b"").decode().splitlines()
        if line.strip()
    ]
    parts.append(
        "<h2>Signed tree heads</h2><table><tr><th>tree size</th><th>signed at (UTC)"
        "</th><th>key</th><th>root</th></tr>"
    )
    parts += [
        f"<tr><td>{h['tree_size']}</td><td>{_utc(h['timestamp_ms'])}</td>"
        f"<td>{e(str(h['key_id']))}</td><td><code>{e(str(h['root_hash']))}</code></td></tr>"
        for h in heads
    ]
    parts.append(
        "</table><h2>Key events</h2><table><tr><th>time</th><th>action</th>"
        "<th>actor</th><th>key</th></tr>"
    )
    for line in files.get("audit/entries.jsonl", b"").decode().splitlines():
        if not line.strip():
            continue
        entry = json.loads(json.loads(line)["payload"])
        if str(entry.get("action", "")).startswith("key."):
            parts.append(
                f"<tr><td>{e(entry['time'])}</td><td>{e(entry['action'])}</td>"
                f"<td>{e(str(entry['actor']))}</td><td>{e(str(entry['key_id']))}</td></tr>"
            )
    parts.append("</table><h2>PCI DSS requirements</h2>")
    parts += _requirements(files.get("requirements.md", b"").decode())
    parts.append("</body></html>")
    return "\n".join(parts)


def _requirements(markdown: str) -> list[str]:
    """requirements.md as a page section: its table as a table, the rest as paragraphs
    (a QSA reads it in the browser; a preformatted block ran off the page)."""
    e = html.escape
    out: list[str] = []
    rows: list[list[str]] = []
    paragraph: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):  # not the |---| rule
                rows.append(cells)
        elif line.strip():
            paragraph.append(line.lstrip("# "))
        if paragraph and not line.strip():
            out.append(f"<p>{e(' '.join(paragraph))}</p>")
            paragraph = []
        if rows and not line.startswith("|"):
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            rows = []
    return out
