"""The `cofre` console script, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

import cofre

COFRE = [sys.executable, "-m", "cofre_cli"]


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COFRE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cofre {cofre.__version__}"


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("dev", "serve", "hsm", "audit", "pki", "api", "config"):
        assert command in result.stdout


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_dev_creates_environment_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    first = run("dev", "--check", "--data-dir", str(data_dir), env=env)
    assert first.returncode == 0, first.stderr
    assert "created dev environment" in first.stdout
    assert "cofre-kek-v1" in first.stdout
    assert "ready" in first.stdout
    assert (data_dir / "hsm" / "user-pin").stat().st_mode & 0o777 == 0o600
    second = run("dev", "--check", "--data-dir", str(data_dir), env=env)
    assert second.returncode == 0, second.stderr
    assert "reusing dev environment" in second.stdout
    assert "created keys" not in second.stdout
    pin = (data_dir / "hsm" / "user-pin").read_text().strip()
    assert pin not in first.stdout + first.stderr + second.stdout + second.stderr

    status = run(
        "hsm", "status", "--json", env={**env, "COFRE_CONFIG": str(data_dir / "cofre.toml")}
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    kek = next(k for k in report["keys"] if k["label"] == "cofre-kek-v1")
    assert kek["sensitive"] is True
    assert kek["extractable"] is False
    assert report["wrap_mechanism"] == "aes-kwp-rfc5649 (AES_KEY_WRAP_PAD)"
    assert pin not in status.stdout

    shown = run("config", "show", env={**env, "COFRE_CONFIG": str(data_dir / "cofre.toml")})
    assert shown.returncode == 0
    assert pin not in shown.stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
    env["COFRE_HSM__PIN_FILE"] = str(tmp_path / "missing")
    result = run("hsm", "status", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error [configuration_error]: cannot read the HSM PIN file")
    assert "Traceback" not in result.stderr


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_audit_commands_verify_and_catch_tampering(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    sequenced = run("audit", "sequence", env=env)
    assert sequenced.returncode == 0, sequenced.stderr
    # Three token keys created and registered by `cofre dev`; the policy it started
    # with and two data keys by the vault's first start, and its stop (`process.stop`).
    # The vault's own sequencer thread may have integrated some before `dev --check`
    # stopped it (a race on its 0.2 s timer), so only the total is fixed: ten entries.
    assert re.fullmatch(r"integrated [0-9]+ entries\n", sequenced.stdout)
    verified = run("audit", "verify", "--unsafe-no-witness", env=env)
    assert verified.returncode == 0, verified.stderr
    checked = re.match(r"OK: 10 entries, ([0-9]+) signed tree heads verified", verified.stdout)
    assert checked is not None, verified.stdout
    heads = int(checked.group(1))
    assert heads >= 1
    head = json.loads(run("audit", "head", env=env).stdout)
    # Each `cofre audit` read writes an entry first (finding F6): queued, not yet in
    # the tree, which only `cofre audit sequence` or a vault grows.
    assert head["tree_size"] == 10
    proof = json.loads(run("audit", "prove", "--index", "1", "--from-size", "1", env=env).stdout)
    assert proof["tree_size"] == 10
    assert len(proof["inclusion_proof"]) == 4
    assert proof["root_hash"] == head["root_hash"]
    out = tmp_path / "export.jsonl"
    exported = run("audit", "export", "--out", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["public_key"] + ["entry"] * 10 + ["head"] * heads
    # The count it prints is the file's: the public key line is a record too.
    assert exported.stdout == f"wrote {len(records)} records to {out}\n"

    db = sqlite3.connect(data_dir / "cofre.sqlite3")
    db.execute("DROP TRIGGER audit_entries_no_update")
    db.execute(
        "UPDATE audit_entries SET payload = replace(payload, 'key.create', 'key.crate') "
        "WHERE id = (SELECT entry_id FROM audit_leaves WHERE leaf_index = 2)"
    )
    db.commit()
    db.close()
    failed = run("audit", "verify", "--unsafe-no-witness", env=env)
    assert failed.returncode == 1
    assert "leaf index 2" in failed.stderr


PLANT = (
    "from cofre.settings import load_settings; from hsm.provider import provider_from_settings;"
    "provider_from_settings(load_settings().hsm).generate_kek('cofre-kek-v2')"
)


@pytest.mark.hsm  # `cofre dev --check` makes its own SoftHSM2 token
def test_hsm_status_reports_a_planted_key_and_dev_check_fails(tmp_path: Path) -> None:
    """Key substitution: a `cofre-kek-v2` created with the crypto-user PIN behind Cofre's
    back is not in the key registry: reported by `cofre hsm status`, and readiness fails
    with `hsm_key_unregistered`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    status = json.loads(run("hsm", "status", "--json", env=env).stdout)
    assert status["registry"] == "ok"
    assert set(status["registered"]) == {"cofre-kek-v1", "cofre-fp-v1", "cofre-audit-v1"}
    assert status["unregistered"] == []
    planted = subprocess.run(
        [sys.executable, "-c", PLANT], env=env, capture_output=True, text=True, check=False
    )
    assert planted.returncode == 0, planted.stderr
    status = json.loads(run("hsm", "status", "--json", env=env).stdout)
    assert status["unregistered"] == ["cofre-kek-v2"]
    shown = run("hsm", "status", env=env)
    assert "UNREGISTERED keys (never used; investigate and destroy): cofre-kek-v2" in shown.stdout
    check = run("dev", "--check", "--data-dir", str(data_dir), env=env)
    assert check.returncode == 1
    assert "hsm_key_unregistered" in check.stderr
    assert "cofre-kek-v2" in check.stderr
    # `cofre hsm init` on the initialised token creates nothing, and every key `cofre
    # dev` created is registered with its CKA_ID and check value, in the audit log.
    assert "nothing to do" in run("hsm", "init", env=env).stdout
    exported = tmp_path / "log.jsonl"
    # `dev --check` may exit before its sequencer integrated the queue: integrate it now,
    # so the export does not depend on timing.
    assert run("audit", "sequence", env=env).returncode == 0
    assert run("audit", "export", "--out", str(exported), env=env).returncode == 0
    registered = [
        json.loads(r["payload"])
        for r in map(json.loads, exported.read_text().splitlines())
        if r["type"] == "entry" and '"action":"key.register"' in r["payload"]
    ]
    assert {(e["key_id"], e["details"]["how"]) for e in registered} == {
        (label, "cofre dev") for label in ("cofre-kek-v1", "cofre-fp-v1", "cofre-audit-v1")
    }


@pytest.mark.hsm  # `cofre dev --check` makes its own SoftHSM2 token
def test_tokens_purge_shreds_expired_tokens(tmp_path: Path) -> None:
    """`cofre tokens purge` crypto-shreds what has expired, at once (every node's purge
    worker also does it on a schedule: tests/vault/test_domains.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    env["COFRE_CONFIG"] = str(data_dir / "cofre.toml")
    # closing(): sqlite3's own context manager commits but leaves the file open.
    with closing(sqlite3.connect(data_dir / "cofre.sqlite3")) as db, db:
        # An expired token row (its ciphertext is never read by the purge).
        db.execute(
            "INSERT INTO tokens (id, token, format, convergent, fingerprint, fp_version, "
            "key_version, nonce, ciphertext, metadata, owner, domain, created_at, expires_at) "
            "VALUES ('00000000-0000-4000-8000-000000000001', 'tok-expired', 'uuid', 0, "
            "randomblob(32), 1, 1, randomblob(12), randomblob(32), '{}', "
            "'spiffe://cofre/payments', 'spiffe://cofre/payments', "
            "'2020-01-01 00:00:00.000000', '2020-01-02 00:00:00.000000')"
        )
    purged = run("tokens", "purge", env=env)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1 expired tokens"
    with closing(sqlite3.connect(data_dir / "cofre.sqlite3")) as db:
        row = db.execute(
            "SELECT ciphertext, fingerprint, deleted_at FROM tokens WHERE token = 'tok-expired'"
        ).fetchone()
        entry = db.execute(
            "SELECT payload FROM audit_entries WHERE payload LIKE '%\"purge\"%'"
        ).fetchone()
    assert row[0] is None
    assert row[1] is None
    assert row[2] is not None
    assert '"actor":"cofre tokens purge"' in entry[0]
    again = run("tokens", "purge", env=env)
    assert again.stdout.strip() == "purged 0 expired tokens"


@pytest.mark.hsm  # `cofre dev` creates a SoftHSM2 token
def test_dev_with_a_broken_policy_fails_before_saying_it_listens(tmp_path: Path) -> None:
    """The newcomer review: an edited policy that does not load printed the whole
    "The vault listens on..." banner with its curl call, and then failed (the banner is
    printed once every worker answers since session 39, after "starting the vault on")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFRE_", "SOFTHSM2_"))}
    data_dir = tmp_path / "dev"
    assert run("dev", "--check", "--data-dir", str(data_dir), env=env).returncode == 0
    policy = data_dir / "policy.toml"
    policy.write_text(policy.read_text() + '\n[identities."spiffe://x/y"]\nreveal = "bogus"\n')
    broken = run("dev", "--data-dir", str(data_dir), env=env)
    assert broken.returncode != 0
    assert "The vault listens" not in broken.stdout
    assert "starting the vault" not in broken.stdout
    assert "policy" in broken.stdout + broken.stderr


def test_db_migrate_makes_a_fresh_data_dir(tmp_path: Path) -> None:
    # README, "CLI": `cofre db migrate` brings the schema to this version; with no
    # database URL the store is a SQLite file in COFRE_DATA_DIR. On a fresh machine the
    # directory did not exist and the command failed with an opaque
    # `storage_unavailable ... OperationalError`, where every other command makes it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COFRE_")}
    data_dir = tmp_path / "fresh" / "data"
    env["COFRE_DATA_DIR"] = str(data_dir)
    status = run("db", "status", env=env, cwd=tmp_path)
    assert status.returncode == 1
    assert status.stderr.startswith("error [schema_mismatch]: the database has no Cofre schema")
    migrated = run("db", "migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("migrated the schema from empty to ")
    assert data_dir.stat().st_mode & 0o777 == 0o700
    status = run("db", "status", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("schema at revision ")
