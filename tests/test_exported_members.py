"""Every package declares its public surface in `__all__`, and this test pins it (httpx's
tests/test_exported_members.py is the model).

A package's `__all__` lists its public modules, its rooms: a module whose name starts
with an underscore is internal. Adding, renaming or removing a public module without
updating `__all__` fails here, so the surface only changes on purpose.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOTS: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]
# Public names a package defines itself, beside its modules.
DEFINED: dict[str, list[str]] = {
    "cofre": ["__version__"],
    "cofre_evidence_verifier": ["__version__"],
}
# Packages Alembic loads by path: nothing may be star-imported from them.
LOADED_BY_PATH = {"vault.migrations", "vault.migrations.versions"}


def _packages() -> list[str]:
    found = []
    for root in ROOTS:
        found.append(root)
        package = importlib.import_module(root)
        found += [
            info.name
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}.")
            if info.ispkg
        ]
    return sorted(found)


def _public_modules(package: ModuleType) -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if info.name[0] != "_"
    )


@pytest.mark.parametrize("name", _packages())
def test_exported_members(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__dict__.get("__all__")
    assert exported is not None, f"{name}/__init__.py declares no __all__"
    if name in LOADED_BY_PATH:
        assert exported == []
        return
    assert exported == DEFINED.get(name, []) + _public_modules(package)
    for member in exported:
        if member not in DEFINED.get(name, []):
            importlib.import_module(f"{name}.{member}")
        assert hasattr(package, member), f"{name}.{member}"
