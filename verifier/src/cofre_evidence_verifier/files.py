"""Check 2: every file the manifest lists is in the bundle with its size and SHA-256,
and nothing else is."""

from __future__ import annotations

import hashlib
from typing import Any

from cofre_evidence_verifier.bundle import MANIFEST, SIGNATURE, Files
from cofre_evidence_verifier.report import Report


def check_files(files: Files, manifest: dict[str, Any], report: Report) -> None:
    """Report each listed file that is missing or differs, and each unlisted one."""
    listed = {f["path"]: f for f in manifest.get("files", [])}
    clean = True
    for name, meta in listed.items():
        data = files.get(name)
        if data is None:
            report.fail(f"{name}: listed in the manifest but missing from the bundle")
            clean = False
        elif len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            report.fail(f"{name}: content differs from the manifest (size or SHA-256)")
            clean = False
    for name in sorted(set(files) - set(listed) - {MANIFEST, SIGNATURE}):
        report.fail(f"{name}: in the bundle but not in the manifest")
        clean = False
    if clean:
        report.passed("files", f"{len(listed)} files match the manifest's SHA-256 and sizes")
