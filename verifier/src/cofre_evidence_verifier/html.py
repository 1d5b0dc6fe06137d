"""A self-contained HTML page of a verification report, for a QSA's browser.

Standalone like the rest of the verifier: no template engine, every value escaped
(quotes too), and nothing drawn from the bundle's files but the values that parse.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

from cofre_evidence_verifier.bundle import Files, json_lines, load_json, read_bundle
from cofre_evidence_verifier.report import Report, printable

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1f24}
h1{font-size:1.6rem} .ok{color:#1a7f37} .fail{color:#cf222e}
table{border-collapse:collapse;width:100%;margin:1rem 0} td,th{border:1px solid #d0d7de;
padding:.35rem .6rem;text-align:left;vertical-align:top} th{background:#f6f8fa}
.badge{display:inline-block;padding:.2rem .7rem;border-radius:1rem;color:#fff;font-weight:600}
.badge.ok{background:#1a7f37} .badge.fail{background:#cf222e}
"""


def _e(value: object) -> str:
    """`value` as page text: control characters shown escaped as in the text report, and
    every HTML special character, quotes included, escaped (values come from the
    bundle, which may hold markup that would draw its own verdict)."""
    return html.escape(printable(str(value)), quote=True)


def _utc(timestamp_ms: object) -> str:
    """A head's signing time as a person reads it (the bundle keeps milliseconds); a
    value that is no time is shown as it is."""
    if isinstance(timestamp_ms, int) and not isinstance(timestamp_ms, bool):
        try:
            moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            pass  # out of the platform's range: shown as the number it is
        else:
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _e(timestamp_ms)


def render_html(report: Report, bundle: Path) -> str:
    """The page: verdict, summary, checks and problems, the tree-head timeline, key
    events, and the requirements map from the bundle. Never raises for a bad bundle:
    the sections drawn from its files are rendered from what parses, and when even
    that fails the page says so instead."""
    verdict = "VERIFIED" if report.ok else "FAILED"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Cofre evidence: "
        f"{verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Cofre evidence bundle <span class='badge {'ok' if report.ok else 'fail'}'>"
        f"{verdict}</span></h1><p>{_e(bundle.name)}</p>",
        "<h2>Summary</h2><table>",
    ]
    for key, value in report.summary.items():
        parts.append(f"<tr><th>{_e(key)}</th><td>{_e(json.dumps(value))}</td></tr>")
    parts.append("</table><h2>Checks</h2><ul>")
    parts += [f"<li class='ok'>&#10003; {_e(c)}</li>" for c in report.checks]
    parts += [f"<li class='fail'>&#10007; {_e(p)}</li>" for p in report.problems]
    if not report.problems:
        parts += [
            f"<li class='fail'>&#10007; the {_e(c)} check did not run to a verdict</li>"
            for c in report.missing_checks()
        ]
    parts.append("</ul>")
    try:
        parts += _bundle_sections(read_bundle(bundle))
    except Exception as exc:  # noqa: BLE001 - a page, never a traceback, whatever the file holds
        parts.append(
            f"<p class='fail'>The bundle's files cannot be shown ({_e(type(exc).__name__)}).</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _bundle_sections(files: Files) -> list[str]:
    """The tree-head timeline, the key events and the requirements map, from the lines
    of the bundle's files that parse and hold values of the expected types (the
    others are left out: the checks above name them)."""
    parts = [
        "<h2>Signed tree heads</h2><table><tr><th>tree size</th><th>signed at (UTC)"
        "</th><th>key</th><th>root</th></tr>"
    ]
    for head in json_lines(files.get("audit/heads.jsonl", b"")):
        size = head.get("tree_size")
        if isinstance(size, int) and not isinstance(size, bool):
            parts.append(
                f"<tr><td>{_e(size)}</td><td>{_utc(head.get('timestamp_ms'))}</td>"
                f"<td>{_e(head.get('key_id'))}</td><td><code>{_e(head.get('root_hash'))}"
                "</code></td></tr>"
            )
    parts.append(
        "</table><h2>Key events</h2><table><tr><th>time</th><th>action</th>"
        "<th>actor</th><th>key</th></tr>"
    )
    for line in json_lines(files.get("audit/entries.jsonl", b"")):
        payload = line.get("payload")
        try:
            entry = load_json(payload) if isinstance(payload, str) else None
        except ValueError:
            entry = None
        if isinstance(entry, dict) and str(entry.get("action", "")).startswith("key."):
            parts.append(
                f"<tr><td>{_e(entry.get('time'))}</td><td>{_e(entry.get('action'))}</td>"
                f"<td>{_e(entry.get('actor'))}</td><td>{_e(entry.get('key_id'))}</td></tr>"
            )
    parts.append("</table><h2>PCI DSS requirements</h2>")
    parts += _requirements(files.get("requirements.md", b"").decode("utf-8", "replace"))
    return parts


def _requirements(markdown: str) -> list[str]:
    """requirements.md as a page section: its table as a table, the rest as paragraphs
    (a QSA reads it in the browser; a preformatted block ran off the page)."""
    e = _e
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
