"""Wheels for a fresh virtualenv, built without a network.

`wheel_from_installed` packs a distribution installed in this interpreter back into a
wheel (its files as installed, a RECORD rewritten over them, its own WHEEL tags): the
suite installs the bits the hash-pinned lock put in .venv, as `pip install --no-index
--find-links` can, instead of downloading them again.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import zipfile
from pathlib import Path

# Written by the installer, not part of the wheel; RECORD is rewritten.
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def _tag(wheel_metadata: str) -> str:
    """The filename tag of a wheel from its WHEEL file's `Tag:` lines (compressed tag
    sets, as `wheel` writes them: `cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64`)."""
    parts: list[list[str]] = [[], [], []]
    for line in wheel_metadata.splitlines():
        if line.startswith("Tag:"):
            for position, value in enumerate(line.split(":", 1)[1].strip().split("-")):
                if value not in parts[position]:
                    parts[position].append(value)
    return "-".join(".".join(values) for values in parts)


def wheel_from_installed(distribution: str, out: Path) -> Path:
    """Write a wheel of the installed `distribution` into `out`; return its path."""
    dist = importlib.metadata.distribution(distribution)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    version = dist.version
    info_dir = f"{name}-{version}.dist-info"
    wheel_text = dist.read_text("WHEEL") or ""
    members = sorted(
        str(f)
        for f in dist.files or []
        if not str(f).startswith("..")
        and "__pycache__" not in f.parts
        and not (f.parts[0].endswith(".dist-info") and f.name in _INSTALLER_FILES)
    )
    path = out / f"{name}-{version}-{_tag(wheel_text)}.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            data = Path(str(dist.locate_file(member))).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{member},sha256={digest.decode()},{len(data)}")
            archive.writestr(member, data)
        record.append(f"{info_dir}/RECORD,,")
        archive.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path
