"""A self-contained HTML page of a verification report, for a QSA's browser.

Standalone like the rest of the verifier: no template engine, every value escaped
(quotes too), and of the bundle's content only what the checks verified (and its
requirements map, a document of the manifest's listing).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from cofre_evidence_verifier.bundle import Files, json_lines, load_json, read_bundle
from cofre_evidence_verifier.report import UNSAFE_MARK, Report, printable

# Bytes of `requirements.md` the page shows. The exporter writes about 5 KB; the file is
# only the exporter's word, signed by the audit key, and a member at the bundle's cap of
# short lines made hundreds of millions of strings of the page (session 40).
MAX_REQUIREMENTS = 64 * 1024

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1b1f24}
h1{font-size:1.6rem} .ok{color:#1a7f37} .fail{color:#cf222e}
table{border-collapse:collapse;width:100%;margin:1rem 0} td,th{border:1px solid #d0d7de;
padding:.35rem .6rem;text-align:left;vertical-align:top} th{background:#f6f8fa}
.badge{display:inline-block;padding:.2rem .7rem;border-radius:1rem;color:#fff;font-weight:600}
.badge.ok{background:#1a7f37} .badge.fail{background:#cf222e} .unsafe{color:#9a6700}
.badge.unsafe{background:#9a6700;color:#fff}
"""


def _e(value: object) -> str:
    """`value` as page text: control characters shown escaped as in the text report, and
    every HTML special character, quotes included, escaped (values come from the
    bundle, which may hold markup that would draw its own verdict)."""
    return html.escape(printable(str(value)), quote=True)


def render_html(report: Report, bundle: Path) -> str:
    """The page: verdict, summary, checks and problems, the tree-head timeline, key
    events, and the requirements map from the bundle. Never raises for a bad bundle:
    the sections drawn from its files are rendered from what parses, and when even
    that fails the page says so instead."""
    verdict = _e(report.verdict)  # VERIFIED with what an --unsafe-… option left unpinned
    # Review 36b: a verdict with something left unpinned was drawn in a pinned pass's green.
    badge = "fail" if not report.ok else "unsafe" if report.unsafe else "ok"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Cofre evidence: "
        f"{verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Cofre evidence bundle <span class='badge {badge}'>"
        f"{verdict}</span></h1><p>{_e(bundle.name)}</p>",
        "<h2>Summary</h2><table>",
    ]
    for key, value in report.summary.items():
        parts.append(f"<tr><th>{_e(key)}</th><td>{_e(json.dumps(value))}</td></tr>")
    parts.append("</table><h2>Checks</h2><ul>")
    parts += [
        f"<li class='unsafe'>&#9888; {_e(c)}</li>"
        if c.startswith(UNSAFE_MARK)
        else f"<li class='ok'>&#10003; {_e(c)}</li>"
        for c in report.checks
    ]
    parts += [f"<li class='fail'>&#10007; {_e(p)}</li>" for p in report.problems]
    if not report.problems:
        parts += [
            f"<li class='fail'>&#10007; the {_e(c)} check did not run to a verdict</li>"
            for c in report.missing_checks()
        ]
    parts.append("</ul>")
    parts += _dual_control(report)
    try:
        parts += _bundle_sections(report, read_bundle(bundle))
    except Exception as exc:  # noqa: BLE001 - a page, never a traceback, whatever the file holds
        parts.append(
            f"<p class='fail'>The bundle's files cannot be shown ({_e(type(exc).__name__)}).</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _dual_control(report: Report) -> list[str]:
    """A row per key ceremony the dual control check looked at (`dual_control`): its
    officers as the check counted them, and whether it proved the quorum."""
    ceremonies = report.summary.get("dual_control")
    if not isinstance(ceremonies, list) or not ceremonies:
        return []
    parts = [
        "<h2>Key rotations under dual control</h2><table><tr><th>ceremony</th><th>kind</th>"
        "<th>start entry</th><th>proposer</th><th>approvers</th><th>officers</th>"
        "<th>signed for</th><th>verdict</th></tr>"
    ]
    for c in ceremonies:
        proven = c.get("proven") is True
        verdict = "proven" if proven else "NOT PROVEN (see the problems above)"
        parts.append(
            f"<tr><td><code>{_e(c.get('ceremony'))}</code></td><td>{_e(c.get('kind'))}</td>"
            f"<td>{_e(c.get('start_entry'))}</td><td>{_e(c.get('proposer') or '-')}</td>"
            f"<td>{_e(', '.join(map(str, c.get('approvers') or [])) or '-')}</td>"
            f"<td>{_e(c.get('officers'))} of {_e(c.get('required'))}</td>"
            f"<td>{_e(', '.join(map(str, c.get('signed_for') or [])) or '-')}</td>"
            f"<td class='{'ok' if proven else 'fail'}'>{_e(verdict)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _bundle_sections(report: Report, files: Files) -> list[str]:
    """The tree-head timeline, the key events and the requirements map: only what the
    checks verified (the heads whose signatures verified; the key events once the
    entries recompute the signed root), so the page never shows a value of the bundle
    as if it had been checked (review 33: unsigned head times and key labels, heads
    that failed, were drawn in the timeline)."""
    parts = [
        "<h2>Signed tree heads (verified)</h2><table><tr><th>tree size</th><th>root</th>"
        "<th>verified with</th></tr>"
    ]
    parts += [
        f"<tr><td>{_e(size)}</td><td><code>{_e(root)}</code></td><td>{_e(key)}</td></tr>"
        for size, root, key in report.verified_heads
    ]
    parts.append("</table>")
    if report.heads_not_shown:
        parts.append(
            f"<p>{report.heads_not_shown} signed head{'s' * (report.heads_not_shown > 1)} "
            "not shown: signed by the audit "
            "key, but not proven prefixes of the covering head.</p>"
        )
    parts.append("<h2>Key events</h2>")
    if "entries" in report.passed_checks:
        parts.append("<table><tr><th>time</th><th>action</th><th>actor</th><th>key</th></tr>")
        parts += _key_events(files)
        parts.append("</table>")
    else:
        parts.append("<p class='fail'>Not shown: the entries did not verify.</p>")
    parts.append("<h2>PCI DSS requirements (the exporter's document)</h2>")
    if "files" in report.passed_checks:
        # Its bytes are the ones the signed manifest lists; what it says is the
        # exporter's, not a finding of this verifier (review 35: shown even when the
        # files check failed, a swapped text stood beside the verified sections).
        text = files.get("requirements.md", b"")
        parts += _requirements(text[:MAX_REQUIREMENTS].decode("utf-8", "replace"))
        if len(text) > MAX_REQUIREMENTS:
            parts.append(
                f"<p class='fail'>{len(text) - MAX_REQUIREMENTS} bytes of requirements.md "
                f"not shown (the page shows its first {MAX_REQUIREMENTS}; the exporter "
                "writes about 5,000): read the file itself</p>"
            )
    else:
        parts.append("<p class='fail'>Not shown: the bundle's files did not verify.</p>")
    return parts


def _key_events(files: Files) -> list[str]:
    """A table row per key event (`key.*` action) of the bundle's entries."""
    rows: list[str] = []
    for line in json_lines(files.get("audit/entries.jsonl", b"")):
        payload = line.get("payload")
        try:
            entry = load_json(payload) if isinstance(payload, str) else None
        except ValueError:
            entry = None
        if isinstance(entry, dict) and str(entry.get("action", "")).startswith("key."):
            rows.append(
                f"<tr><td>{_e(entry.get('time'))}</td><td>{_e(entry.get('action'))}</td>"
                f"<td>{_e(entry.get('actor'))}</td><td>{_e(entry.get('key_id'))}</td></tr>"
            )
    return rows


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
