"""A bundle that starts at the log's first entry (an auditor's first day): the vault set
its keys up (audited) before it loaded its first policy, so no policy was in force at
index 0, and none could be (review 41: every such bundle failed verification)."""

from __future__ import annotations

import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cofre.settings import Settings
from cofre_cli._opening import open_database, record_key_creation
from cofre_evidence_verifier import policy
from hsm.keys import KeyHierarchy, KeyKind
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.vault_evidence import export_response, verify_unwitnessed


def _first_actions(bundle: Path) -> list[str]:
    with tarfile.open(bundle, "r:gz") as archive:
        member = archive.extractfile("audit/entries.jsonl")
        assert member is not None
        lines = member.read().decode().splitlines()
    return [json.loads(json.loads(line)["payload"])["action"] for line in lines]


def test_a_bundle_from_the_logs_first_entry_verifies(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    # As `cofre hsm init` does before the first `cofre serve`: the keys' creation is
    # audited (and registered) before any policy is loaded.
    engine = open_database(Settings(data_dir=tmp_path), run_migrations=True)
    labels = [KeyHierarchy(hsm_provider).current_label(kind) for kind in KeyKind]
    record_key_creation(engine, hsm_provider, labels, actor="cofre hsm init")
    engine.dispose()
    with running_vault(tmp_path, hsm_provider) as vault:
        with vault.client("payments") as client:
            body = {"pan": "4111111111111111", "format": "uuid"}
            assert client.post("/v1/tokenize", json=body).status_code in (200, 201)
        since = datetime.now(UTC) - timedelta(days=30)  # before the vault began
        response = export_response(vault, since)
        assert response.status_code == 200, response.text
        bundle = tmp_path / "first.tar.gz"
        bundle.write_bytes(response.content)
        actions = _first_actions(bundle)
        report = verify_unwitnessed(bundle, hsm_provider.public_key_pem("cofre-audit-v1"))
    assert actions[:2] == ["key.create", "key.register"], actions  # keys set up first
    assert report.problems == [], report.problems
    # The vault still runs at the export: its start has no stop yet, and the report says
    # so for the auditor to ask (review of session 32: it said nothing).
    [lifecycle] = [c for c in report.checks if c.startswith("process lifecycle")]
    assert "1 starts naming host and pid, 0 graceful stops" in lifecycle, lifecycle
    assert "1 starts with no stop after them" in lifecycle, lifecycle


def _entries(*actions: str) -> dict[str, bytes]:
    lines = [
        json.dumps({"index": i, "payload": json.dumps({"action": action})})
        for i, action in enumerate(actions)
    ]
    return {"audit/entries.jsonl": "\n".join(lines).encode()}


def test_only_the_keys_set_up_may_come_before_the_first_policy() -> None:
    assert policy._set_up_before(_entries("key.create", "key.register", "policy.load"), 2)
    # A token operation, or any other entry, needs a policy in force.
    assert not policy._set_up_before(_entries("key.create", "tokenize", "policy.load"), 2)
    assert not policy._set_up_before(_entries("key.create", "api.request", "policy.load"), 2)
    # Every entry before the first policy must be in the bundle.
    assert not policy._set_up_before(_entries("key.create", "key.register"), 3)


def _log(*entries: tuple[str, str]) -> dict[str, bytes]:
    """Entries of (action, actor), indexed from 0."""
    lines = [
        json.dumps({"index": i, "payload": json.dumps({"action": action, "actor": actor})})
        for i, (action, actor) in enumerate(entries)
    ]
    return {"audit/entries.jsonl": "\n".join(lines).encode()}


KEYS_SET_UP = (("key.create", "cofre hsm init"), ("key.register", "cofre hsm init"))


def test_a_cli_read_of_the_log_before_the_first_start_needs_no_policy() -> None:
    """Finding F6: `cofre audit verify` (or head, prove, export) run between `cofre hsm
    init` and the first `cofre serve` writes an `audit_read` entry before any policy is
    loaded; the CLI reads under no policy, so the first day's bundle still verifies."""
    read = ("audit_read", "cofre audit verify")
    assert policy._set_up_before(_log(*KEYS_SET_UP, read, ("policy.load", "cofre")), 3)


def test_only_a_cli_read_comes_before_the_first_policy() -> None:
    """Review of session 32: the API reads the log under a policy (its `audit_read` is an
    authorised operation of a certificate identity), and every serving process writes
    its `policy.load` before it serves. An API `audit_read` before the log's first policy
    load is a request served under a policy the log does not show (a load entry lost or
    removed): the first-day check must not take it for set-up, as it takes the CLI's."""
    for actor in ("payments", "auditor", "", "cofre", "cofre auditverify"):
        files = _log(*KEYS_SET_UP, ("audit_read", actor), ("policy.load", "cofre"))
        assert not policy._set_up_before(files, 3), actor
