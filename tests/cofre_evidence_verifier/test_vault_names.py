"""The vault's names check 6c compares each signed ``@authority`` with
(`cofre_evidence_verifier.vault_names`): how a pinned or recorded name is read and
matched, and a malformed record or pin failing rather than matching anything."""

from __future__ import annotations

import json

import pytest

from cofre_evidence_verifier.bundle import OFFICER_AUTHORITIES
from cofre_evidence_verifier.vault_names import parse_name, vault_names


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Vault.Example", ("vault.example", None)),
        ("vault.example:8443", ("vault.example", "8443")),
        ("127.0.0.1", ("127.0.0.1", None)),
        ("::1", ("::1", None)),
        ("[0:0::1]:8443", ("::1", "8443")),
        ("[::1]", ("::1", None)),
    ],
)
def test_a_name_is_read_as_the_vault_compares_it(text: str, name: tuple[str, str | None]) -> None:
    assert parse_name(text) == name


@pytest.mark.parametrize(
    "text", ["", "user@vault.example", "*.vault.example", "vault.example:0", "[10.0.0.1]", "a b"]
)
def test_a_name_no_vault_has_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"host|port"):
        parse_name(text)


@pytest.mark.parametrize(
    ("own", "signed", "matches"),
    [
        (["localhost"], "localhost", True),
        (["localhost"], "localhost:8443", True),  # a name without a port: any port
        (["localhost:8443"], "localhost:8443", True),
        (["localhost:8443"], "localhost", False),  # 443
        (["localhost:443"], "localhost", True),
        (["localhost:8443"], "localhost:08443", True),  # the vault reads the port as a number
        (["::1"], "[::1]:8443", True),
        (["127.0.0.1"], "localhost", False),
        (["vault.example"], "staging.vault.example", False),
        (["vault.example"], "vault.example.attacker.example", False),
    ],
)
def test_a_signed_authority_matches_a_pinned_name(
    own: list[str], signed: str, matches: bool
) -> None:
    problems: list[str] = []
    names = vault_names({}, own, problems)
    assert problems == []
    assert (names.problem(signed) is None) is matches


@pytest.mark.parametrize(
    "content", [b"[]", b'{"names": "localhost"}', b'{"names": [1]}', b"{", b'{"names": ["a b"]}']
)
def test_a_malformed_record_fails_and_matches_nothing(content: bytes) -> None:
    problems: list[str] = []
    names = vault_names({OFFICER_AUTHORITIES: content}, None, problems)
    assert problems, content
    assert OFFICER_AUTHORITIES in problems[0]
    assert names.problem("localhost") is not None


def test_the_pin_wins_over_the_record_which_is_still_shown() -> None:
    record = json.dumps({"names": ["localhost", "staging.vault.example"]}).encode()
    problems: list[str] = []
    names = vault_names({OFFICER_AUTHORITIES: record}, ["localhost"], problems)
    assert names.problem("staging.vault.example") is not None
    assert names.summary()["recorded"] == ["localhost", "staging.vault.example"]
    assert names.summary()["compared_with"] == ["localhost"]
    assert "pinned" in names.summary()["source"]


def test_a_malformed_pin_fails() -> None:
    problems: list[str] = []
    names = vault_names({}, ["user@vault.example"], problems)
    assert problems
    assert names.problem("vault.example") is not None


def test_no_names_at_all_fails_every_signature() -> None:
    problems: list[str] = []
    names = vault_names({}, None, problems)
    assert problems == []
    assert "pin the vault's name with --authority" in (names.problem("localhost") or "")


def test_recorded_ports_bind_each_recorded_name() -> None:
    record = json.dumps({"names": ["vault.example"], "ports": [443, 8443]}).encode()
    problems: list[str] = []
    names = vault_names({OFFICER_AUTHORITIES: record}, None, problems)
    assert problems == []
    assert names.problem("vault.example") is None
    assert names.problem("vault.example:8443") is None
    assert names.problem("vault.example:9443") is not None


@pytest.mark.parametrize("ports", ["443", [0], [True], ["443"], [70000]])
def test_recorded_ports_that_are_no_ports_fail(ports: object) -> None:
    record = json.dumps({"names": ["vault.example"], "ports": ports}).encode()
    problems: list[str] = []
    names = vault_names({OFFICER_AUTHORITIES: record}, None, problems)
    assert problems
    assert names.problem("vault.example") is not None
