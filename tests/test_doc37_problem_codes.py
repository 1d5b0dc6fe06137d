"""The problem codes the documents name are the ones the API answers, with its status.

tests/test_documented_interface.py pins one direction: every code the API can answer
has a row in docs/api.md's error table with its status. These pin the other: a code
the table lists that no error carries any more (a renamed or removed code, left in the
table by a reviewer who added a row beside it), and a status written next to a code
anywhere in README.md or docs/ ("429 `oracle_suspected`", "`503 hsm_key_unregistered`")
that is not the status the code is answered with. Session 37: eleven reviewers added
sections to the same pages in parallel, each naming codes and statuses in prose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import policies.models
from api.problems import PROBLEMS
from cofre.errors import CofreError
from tests.test_documented_interface import DOCUMENTS, NOT_ANSWERED_BY_THE_API
from vault import errors as vault_errors
from witness import errors as witness_errors

ROOT = Path(__file__).resolve().parents[1]
API_MD = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
TABLE = API_MD[API_MD.index("| status | codes |") : API_MD.index("Validation errors list")]


def _policy_keys() -> set[str]:
    """The policy's own keys (`max_pans_per_bucket`, `luhn_exempt`): the table's notes
    name them in backticks beside the codes."""
    return {
        name
        for model in vars(policies.models).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields
    }


def _witness_statuses() -> dict[str, int]:
    """The witness is its own process with its protocol's statuses (c2sp.org/tlog-witness);
    docs/threat-model.md names some of its refusals."""
    return {
        cls.code: cls.status
        for cls in vars(witness_errors).values()
        if isinstance(cls, type) and issubclass(cls, witness_errors.WitnessError)
    }


def test_every_code_in_the_api_error_table_is_one_the_api_answers() -> None:
    listed = set(re.findall(r"`([a-z][a-z0-9_]+)`", TABLE))
    dead = sorted(listed - set(PROBLEMS) - _policy_keys())
    assert dead == [], f"docs/api.md's error table lists codes nothing answers: {dead}"
    not_answered = sorted(listed & NOT_ANSWERED_BY_THE_API)
    assert not_answered == [], f"the table lists codes the API never answers: {not_answered}"


# "429 `oracle_suspected`", "(503 `upstream_busy` past either)", "`503 hsm_key_unregistered`".
_STATUS_AND_CODE = re.compile(
    r"(?<![\w.])([1-5]\d\d) `([a-z][a-z0-9]*_[a-z0-9_]+)`|`([1-5]\d\d) ([a-z][a-z0-9]*_[a-z0-9_]+)`"
)


def _statuses_written() -> Iterator[tuple[str, int, int, str]]:
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            for match in _STATUS_AND_CODE.finditer(line):
                status = int(match.group(1) or match.group(3))
                code = match.group(2) or match.group(4)
                yield path.name, number, status, code


def test_a_status_written_beside_a_code_is_the_one_it_is_answered_with() -> None:
    witness = _witness_statuses()
    problems = []
    seen = 0
    for document, number, status, code in _statuses_written():
        seen += 1
        if code in PROBLEMS:
            answered = PROBLEMS[code][0]
        elif code in witness:
            answered = witness[code]
        else:
            problems.append(f"{document}:{number}: {status} `{code}`: no such problem code")
            continue
        if status != answered:
            problems.append(f"{document}:{number}: {status} `{code}`: answered {answered}")
    assert problems == []
    assert seen > 50  # the documents are still read


@pytest.mark.parametrize(
    "code", ["integrity_error", "oracle_suspected", "hsm_key_unregistered", "invalid_relay_body"]
)
def test_session_37s_codes_are_explained_in_the_table(code: str) -> None:
    # A code listed bare tells a client nothing to switch on: the codes session 37 added
    # or gave new causes carry a parenthesis saying when they are answered.
    assert re.search(rf"`{code}` \(", TABLE), f"{code} has no explanation in docs/api.md"


def test_the_vault_error_tree_names_each_class_with_its_code() -> None:
    # vault/errors.py draws its tree with each leaf's code ("RelayBodyInvalid ... code
    # invalid_relay_body"): the first thing a reader of an unknown code greps.
    tree = vault_errors.__doc__ or ""
    drawn = re.findall(r"(\w+)\s+(?:\([^)]*\)\s+)?code ([a-z][a-z0-9_]+)", tree)
    assert len(drawn) > 40  # the tree is still read
    problems = []
    for name, code in drawn:
        cls = getattr(vault_errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, CofreError)):
            problems.append(f"{name}: no such error in vault.errors")
        elif cls.code != code:
            problems.append(f"{name}: the tree says {code}, the class {cls.code}")
    assert problems == []


OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
_UPGRADE_TITLE = re.compile(r"\*\*Upgrade notes?: ([^*]*?)\.?\*\*")


def test_each_sessions_upgrade_notes_are_one_section() -> None:
    # Session 37's reviewers each wrote an "Upgrade note ... (session 37)" of their own,
    # three places apart: an operator reading "Upgrade notes: session 37" missed two.
    sessions = [
        session
        for title in _UPGRADE_TITLE.findall(OPERATIONS)
        for session in re.findall(r"session (\d+)", title)
    ]
    assert len(sessions) > 5  # the titles are still read
    twice = sorted({s for s in sessions if sessions.count(s) > 1})
    assert twice == [], f"docs/operations.md has more than one upgrade note for sessions {twice}"


def test_references_to_upgrade_notes_name_a_section_that_exists() -> None:
    titles = {
        "Upgrade notes: " + title.split(" (")[0] for title in _UPGRADE_TITLE.findall(OPERATIONS)
    }
    problems = [
        f"{path.name}: {name}"
        for path in DOCUMENTS
        for name in re.findall(r'"(Upgrade notes?: session \d+)"', path.read_text(encoding="utf-8"))
        if name not in titles
    ]
    assert problems == []
