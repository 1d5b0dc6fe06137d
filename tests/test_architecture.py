"""The shape of the house, checked over the real import graph (grimp, as import-linter
builds it): what the `pyproject.toml` contracts cannot say for packages added later."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import grimp
import pytest

from cofre.errors import CofreError

ROOT = Path(__file__).resolve().parent.parent
ROOTS: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]
BASE = "cofre"
ROOF = "cofre_cli"
# The API's rooms below it: it reaches everything else through the vault's facade.
API_REACHES = {"vault", "policies", BASE}


@pytest.fixture(scope="module")
def package_edges() -> dict[str, set[str]]:
    """Top-level package -> the top-level packages of ours it imports directly."""
    graph = grimp.build_graph(*ROOTS)
    edges: dict[str, set[str]] = {name: set() for name in ROOTS}
    for module in graph.modules:
        importer = module.split(".")[0]
        for imported in graph.find_modules_directly_imported_by(module):
            target = imported.split(".")[0]
            if target != importer and target in edges:
                edges[importer].add(target)
    return edges


def test_every_package_is_under_the_contracts() -> None:
    """A new top-level package is listed in `root_packages`, or no contract sees it."""
    packages = {
        path.parent.name
        for path in [*ROOT.glob("*/__init__.py"), *ROOT.glob("verifier/src/*/__init__.py")]
        if path.parent.name not in {"tests", "bench"}
    }
    assert packages == set(ROOTS)


def test_the_base_imports_nothing_of_ours(package_edges: dict[str, set[str]]) -> None:
    assert package_edges[BASE] == set()


def test_nothing_imports_the_roof(package_edges: dict[str, set[str]]) -> None:
    assert sorted(name for name, targets in package_edges.items() if ROOF in targets) == []


def test_no_cycle_between_top_level_packages(package_edges: dict[str, set[str]]) -> None:
    """Depth-first search for a back edge: any cycle, of any length, is named."""
    state: dict[str, str] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = "open"
        path.append(name)
        for target in sorted(package_edges[name]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = "done"

    for name in sorted(package_edges):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_api_reaches_only_the_vault_policies_and_the_base(
    package_edges: dict[str, set[str]],
) -> None:
    """Architecture: api -> vault, policies. Unlike a `forbidden` contract, which names
    what it forbids, this also holds against packages added later."""
    assert package_edges["api"] - API_REACHES == set()


def _our_modules() -> list[ModuleType]:
    modules = []
    for root in ROOTS:
        package = importlib.import_module(root)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}."):
            # Migrations are loaded by Alembic by path; __main__ runs the CLI.
            if ".migrations" in info.name or info.name.endswith(".__main__"):
                continue
            modules.append(importlib.import_module(info.name))
    return modules


def test_errors_live_in_their_packages_errors_py() -> None:
    """Every `CofreError` is in its package's errors.py, where its tree is drawn; an
    exception class defined anywhere else is private (a signal that never leaves its
    module, like `api.connections._HeadTooLarge`)."""
    misplaced = []
    for module in _our_modules():
        if module.__name__.rsplit(".", 1)[-1] == "errors":
            continue
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and (issubclass(value, CofreError) or not name.startswith("_"))
            ):
                misplaced.append(f"{module.__name__}.{name}")
    assert misplaced == []


MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines() -> None:
    """Small rooms: a module past 600 lines is split by concern (migrations aside)."""
    sizes = {
        module.__name__: len(Path(str(module.__file__)).read_text(encoding="utf-8").splitlines())
        for module in _our_modules()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
