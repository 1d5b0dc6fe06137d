"""What the README and docs/ tell a reader to type exists: every `COFRE_*` variable they
name is one some program reads, every `cofre ...` and `cofre-verify ...` command they
show exists and takes the options shown after it, the README's tables list every
setting (with its default) and every command with its options, and docs/api.md's error
table every problem code the API answers, with its status.

A newcomer, an on-call engineer, an officer and an auditor each followed the documents
literally (session 29); these pin the facts they tripped over, so a renamed option or a
new setting without its row fails here instead of in someone's runbook.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from api.problems import PROBLEMS
from cofre.settings import OTHER_PREFIXES, OTHER_VARIABLES, Settings, unknown_variables
from cofre_cli.main import app
from infra_pci.model import PciEnvironment

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _setting_names(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, bool]]:
    """(`COFRE_...` name, is a leaf) for every field, nested sections with `__`."""
    for name, field in model.model_fields.items():
        full = prefix + name.upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield full, False
            yield from _setting_names(annotation, full + "__")
        else:
            yield full, True


SETTINGS = dict(_setting_names(Settings, "COFRE_"))
LEAF_SETTINGS = {name for name, leaf in SETTINGS.items() if leaf}


def _commands() -> dict[str, Any]:
    """'cofre group command' (or 'cofre command') -> its click command."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found[" ".join(["cofre", *path])] = command
            return
        if path:
            found[" ".join(["cofre", *path])] = command
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _commands()


def _options(command: Any) -> set[str]:
    """The long options of a command; of a group, those of any of its commands."""
    if hasattr(command, "commands"):
        return set().union(*(_options(sub) for sub in command.commands.values()))
    return {o for p in command.params for o in p.opts if o.startswith("--")} | {"--help"}


def _hidden(command: Any) -> set[str]:
    """A command's hidden options: plumbing between Cofre's own processes (`cofre dev`
    starting its witness), not an interface the README documents."""
    return {o for p in command.params if getattr(p, "hidden", False) for o in p.opts}


def _known_variables() -> set[str]:
    names = set(SETTINGS) | set(OTHER_VARIABLES)
    for command in COMMANDS.values():
        for param in getattr(command, "params", []):
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    names.update(f"COFRE_INFRA_{field.upper()}" for field in PciEnvironment.model_fields)
    shim = (ROOT / "tests" / "support" / "cloudhsm_shim.c").read_text(encoding="utf-8")
    names.update(re.findall(r'getenv\("(COFRE_[A-Z0-9_]+)"\)', shim))
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    names.update(re.findall(r"\b(COFRE_TEST_[A-Z0-9_]+)\b", conftest))
    return names


KNOWN_VARIABLES = _known_variables()
# README, "Configuration": "`COFRE_HSM_PIN_FILE` for `COFRE_HSM__PIN_FILE`"; and
# docs/operations.md, "Deploy on Kubernetes": the kubelet's link variables for the
# Service `cofre`, which the settings refuse, and the typo the refusal tells apart from
# them (review 36).
MISSPELT_ON_PURPOSE = {
    "COFRE_HSM_PIN_FILE",
    "COFRE_SERVICE_HOST",
    "COFRE_PORT",
    "COFRE_PORT_8443_TCP_ADDR",
    "COFRE_SERVER_PORT",
}


def _variables_in(text: str) -> Iterator[str]:
    """Every `COFRE_...` name written out in `text`, with the README table's shorthands
    (`COFRE_SERVER__HOST` / `__PORT`, `COFRE_KEYS__CRYPTOPERIOD_KEK_DAYS` /
    `_DATA_DAYS`) expanded."""
    yield from re.findall(r"\bCOFRE_[A-Z0-9_]*[A-Z0-9]\b", text)
    for line in text.splitlines():
        cell = line.split("|")[1] if line.startswith("| `COFRE_") else ""
        items = re.findall(r"`([A-Z0-9_]+)`", cell)
        for item in items[1:]:
            if item.startswith("__"):
                yield items[0].split("__")[0] + item
            elif item.startswith("_"):
                yield "_".join(items[0].split("_")[: -item.count("_")]) + item


def _documented_variables() -> Iterator[tuple[str, str]]:
    for path in DOCUMENTS:
        for name in _variables_in(path.read_text(encoding="utf-8")):
            yield path.name, name


@pytest.mark.parametrize(("document", "name"), sorted(set(_documented_variables())), ids=str)
def test_every_documented_variable_is_read_by_something(document: str, name: str) -> None:
    # Settings (whole sections too: `COFRE_KEYS__…`), the CLI's own variables, the
    # witness's and infra's, the CloudHSM shim's and the suite's.
    if name.startswith(OTHER_PREFIXES) and name.endswith("_"):
        return  # a prefix named as such (`COFRE_INFRA_*`)
    if name in MISSPELT_ON_PURPOSE:
        # The README's example of a typo the CLI stops at: it must still be one.
        assert unknown_variables({name: "x"}) == [name]
        return
    assert name in KNOWN_VARIABLES, f"{document} names {name}, which nothing reads"


def test_every_variable_read_outside_the_settings_is_documented() -> None:
    # The other way round for what is no setting: the CLI's options' variables
    # (`COFRE_OFFICER`, `COFRE_WITNESS_*`) and `OTHER_VARIABLES`, which the settings'
    # unknown-variable check lets through. Session 33: `COFRE_PG_BINDIR`, named by the
    # suite's own error when it finds no `initdb`, was in no document.
    names = set(OTHER_VARIABLES)
    for command in COMMANDS.values():
        for param in getattr(command, "params", []):
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    documented = {name for _, name in _documented_variables()}
    assert sorted(names - documented) == []


def test_the_readme_configuration_table_lists_every_setting() -> None:
    table = README[README.index("## Configuration") : README.index("## CLI")]
    missing = sorted(LEAF_SETTINGS - set(_variables_in(table)))
    assert missing == [], f"settings without a row in the README's table: {missing}"


def _defaults(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, object]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _defaults(annotation, prefix + name.upper() + "__")
        else:
            yield prefix + name.upper(), field.default


def _as_written(value: object) -> str | None:
    """A default as the README writes it: `false`, `5` for 5.0, `1.3` for TLS 1.3."""
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(getattr(value, "value", value))


def test_the_readme_configuration_table_states_the_defaults() -> None:
    # Each row's default cell: one value per name ("`127.0.0.1` / `8443`"), or one for
    # all; a value is a literal in backticks (a parenthesis may follow: "(`true` in
    # `cofre dev`)"), or "unset"/"none"; other words describe a computed default
    # ("`https://localhost:PORT` on loopback, ...") and are not compared.
    defaults = dict(_defaults(Settings, "COFRE_"))
    table = README[README.index("## Configuration") : README.index("## CLI")]
    compared, problems = 0, []
    for line in table.splitlines():
        if not line.startswith("| `COFRE_"):
            continue
        name_cell, default_cell = line.split("|")[1:3]
        names = list(_variables_in(f"|{name_cell}|"))
        names = [n for n in dict.fromkeys(names) if n in defaults]
        parts = [part.strip() for part in default_cell.split(" / ")]
        if len(parts) == 1:
            parts *= len(names)
        if len(parts) != len(names):
            continue
        for name, part in zip(names, parts, strict=True):
            literal = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", part)
            if literal is not None:
                written: str | None = literal.group(1)
            elif part.startswith(("unset", "none")):
                written = None
            else:
                continue
            compared += 1
            if written != _as_written(defaults[name]):
                problems.append(f"{name}: README says {written}, the code {defaults[name]!r}")
    assert problems == []
    assert compared > 60  # the table is still read


# `kubectl -n cofre ...` and paths such as `cofre-audit/...` are not the CLI.
_INVOCATION = re.compile(r"(?<![\w/.-])(?<!-n )cofre((?: [a-z][a-z-]*){1,2})([^`|\n#]*)")


def _documented_invocations() -> Iterator[tuple[str, int, str, str]]:
    for path in DOCUMENTS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in _INVOCATION.finditer(line):
                yield path.name, number, match.group(1).split(), match.group(2)


def _resolve(words: list[str]) -> tuple[str | None, list[str]]:
    """The longest 'cofre ...' command the words start with, and the words left."""
    for size in (2, 1):
        name = " ".join(["cofre", *words[:size]])
        if name in COMMANDS:
            return name, words[size:]
    return None, words


def test_every_documented_command_exists_with_its_options() -> None:
    problems = []
    for document, number, words, rest in _documented_invocations():
        name, left = _resolve(words)
        where = f"{document}:{number}: cofre {' '.join(words)}"
        if name is None:
            problems.append(f"{where}: no such command")
            continue
        command = COMMANDS[name]
        if hasattr(command, "commands") and left and left[0] not in command.commands:
            problems.append(f"{where}: {name} has no command {left[0]!r}")
            continue
        shown = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join([*left, rest]))
        problems.extend(
            f"{where}: {name} takes no {option}"
            for option in shown
            if option not in _options(command)
        )
    assert problems == []


def test_the_readme_cli_table_lists_every_command_and_option() -> None:
    section = README[README.index("## CLI") : README.index("## The API in one table")]
    rows = [line for line in section.splitlines() if line.startswith("| `cofre")]
    problems = []
    for name, command in COMMANDS.items():
        if hasattr(command, "commands"):
            continue
        group, _, leaf = name.rpartition(" ")
        # A row names the command whole or in a `list|rotate|...` alternation.
        mine = [
            row
            for row in rows
            if name in row or (group != "cofre" and group in row and re.search(rf"\b{leaf}\b", row))
        ]
        if not mine:
            problems.append(f"{name}: no row")
            continue
        problems.extend(
            f"{name}: {option} not in its row"
            for option in sorted(_options(command) - {"--help"} - _hidden(command))
            if not any(option in row for row in mine)
        )
    assert problems == []


# Codes in api.problems.PROBLEMS that no API answer carries: the base classes' (never
# raised themselves) and those of commands outside the API (the CLI, the witness, the
# AWS control plane, the policy loader at start). The audit proof routes answer
# `not_found` for a `proof_invalid`.
NOT_ANSWERED_BY_THE_API = {
    "api_error",
    "audit_error",
    "capture_error",
    "cofre_error",
    "hsm_error",
    "infra_error",
    "pki_error",
    "policy_error",
    "throttled",
    "vault_error",
    "archive_bucket_unfit",
    "audit_archive_failed",
    "audit_retention_refused",
    "audit_verification_failed",
    "aws_call_failed",
    "aws_credentials_missing",
    "configuration_error",
    "vault_unreachable",
    "hsm_token_in_service",
    "peer_vpc_not_found",
    "policy_invalid",
    "proof_invalid",
    "schema_mismatch",
    "witness_cosignature_invalid",
    "witness_refused",
}


def test_the_api_error_table_lists_every_code_with_its_status() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    table = text[text.index("| status | codes |") : text.index("Validation errors list")]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        if line.startswith("|"):
            statuses, codes = line.split("|")[1], "|".join(line.split("|")[2:])
            for code in re.findall(r"`([a-z][a-z0-9_]+)`", codes):
                documented.setdefault(code, set()).update(s.strip() for s in statuses.split("/"))
    assert set(PROBLEMS) >= NOT_ANSWERED_BY_THE_API
    problems = [
        f"{code} ({status}) is not in docs/api.md's error table"
        for code, (status, _) in sorted(PROBLEMS.items())
        if code not in documented and code not in NOT_ANSWERED_BY_THE_API
    ]
    problems += [
        f"{code}: docs/api.md says {sorted(documented[code])}, the code {status}"
        for code, (status, _) in sorted(PROBLEMS.items())
        if code in documented and str(status) not in documented[code]
    ]
    assert problems == []


def _verifier_options() -> set[str]:
    shown = subprocess.run(
        [sys.executable, "-m", "cofre_evidence_verifier", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", shown))


def test_the_offline_verifier_takes_the_documented_options() -> None:
    # docs/auditor-guide.md: "`cofre evidence verify` takes the same arguments" as
    # `cofre-verify`, and each `cofre-verify ...` line shows options it takes.
    verifier = _verifier_options()
    assert _options(COMMANDS["cofre evidence verify"]) == verifier - {"--version"}
    problems = []
    for path in DOCUMENTS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for rest in re.findall(r"(?<![\w/.-])cofre-verify\b([^`|\n#]*)", line):
                shown = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
                problems.extend(
                    f"{path.name}:{number}: cofre-verify takes no {option}"
                    for option in shown
                    if option not in verifier
                )
    assert problems == []


def test_every_option_and_argument_says_what_it_is_in_its_help() -> None:
    """`cofre X --help` is the first document an on-call engineer reads: an option shown
    with its type alone (`--quorum <int range>`, `--host <str>`) or an argument with none
    (`ceremony_id <str>`) leaves them guessing (session 36). An option's help must also
    name only options its command takes (`mfa init` offered `--cert/--key`)."""
    problems = []
    for name, command in COMMANDS.items():
        if hasattr(command, "commands"):
            continue
        taken = _options(command)
        for param in command.params:
            if getattr(param, "hidden", False) or "--help" in param.opts:
                continue
            text = getattr(param, "help", None) or ""
            if not text.strip():
                problems.append(f"{name} {param.opts[0]}: no help text")
            problems.extend(
                f"{name} {param.opts[0]}: its help names {option}, which {name} does not take"
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text)
                if option not in taken
            )
    assert problems == []
