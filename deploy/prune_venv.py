"""Remove from the image's virtual environment every distribution the vault does not run.

The build stage installs the whole hash-pinned lock (requirements.lock: the only pinned,
hash-checked set this project has), which also pins the test, lint and bench tools:
pytest, mypy, ruff, moto, py-spy, selenium, hadolint, matplotlib and their dependencies.
None of them belongs in the cardholder data environment (PCI DSS 2.2.4: only what the
system's function needs). This keeps the requirement closure of the distribution named
on the command line (`cofre-vault`, from its installed metadata: extras and markers
evaluated as pip does) and uninstalls the rest, pip, setuptools and wheel included.

Run by deploy/Dockerfile with the venv's own interpreter; tested in
tests/deploy/test_image_contents.py. Standard library only: it runs before anything is
known to be left.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata

# Requirement lines as pip writes them: `name[extra,...] (spec) ; marker`.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?([^;]*)(?:;(.*))?$")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_holds(marker: str, extras: frozenset[str]) -> bool:
    """Whether a requirement's marker holds on this interpreter with `extras` asked for.

    Only `extra == "..."` clauses and what `packaging` would need are evaluated; the
    interpreter's own markers are evaluated through `packaging` when it is installed,
    else conservatively taken as true (a dependency kept too many, never one missing).
    """
    if not marker.strip():
        return True
    try:
        from packaging.markers import Marker  # noqa: PLC0415 - optional at image build
    except ImportError:
        wanted = re.findall(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        return not wanted or any(canonical(w) in extras for w in wanted)
    parsed = Marker(marker)
    if "extra" not in marker:
        return parsed.evaluate()
    return any(parsed.evaluate({"extra": extra}) for extra in extras)


def closure(requirements: Iterable[str]) -> set[str]:
    """The canonical names of the distributions `requirements` need, transitively, as
    installed here. Raises `metadata.PackageNotFoundError` for one that is not."""
    keep: set[str] = set()
    pending = [(line, frozenset[str]()) for line in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        line, parent_extras = pending.pop()
        match = _REQUIREMENT.match(line)
        if match is None:
            raise ValueError(f"cannot read the requirement {line!r}")
        name, extras_text, _spec, marker = match.groups()
        if not _marker_holds(marker or "", parent_extras):
            continue
        extras = frozenset(canonical(e) for e in (extras_text or "").split(",") if e.strip())
        key = (canonical(name), extras)
        if key in seen:
            continue
        seen.add(key)
        keep.add(key[0])
        requires = metadata.requires(name) or []
        # The extras asked for, plus "" for the unconditional requirements.
        pending += [(child, extras | {""}) for child in requires]
    return keep


def installed() -> set[str]:
    return {canonical(d.metadata["Name"]) for d in metadata.distributions()}


def main(argv: list[str]) -> int:
    (root,) = argv
    remove = installed() - closure([root])
    # pip last and alone: it stashes the files it removes, and a pip uninstalling itself
    # among others could miss a module of its own it has not imported yet.
    for batch in (sorted(remove - {"pip"}), sorted(remove & {"pip"})):
        if batch:
            subprocess.run(  # noqa: S603 - this interpreter's pip, names from its metadata
                [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *batch],
                check=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
