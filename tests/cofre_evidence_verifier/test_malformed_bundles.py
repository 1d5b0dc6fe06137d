"""A hostile bundle gives a FAILED report, never an uncaught exception: `verify_bundle`
never raises for a bad bundle (review 29). Most of these need no key at all: anyone who
can hand the auditor a file could crash the verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import MAX_JSON_DEPTH, load_json
from cofre_evidence_verifier.cli import main
from cofre_evidence_verifier.keychain import handover_note, handover_text
from cofre_evidence_verifier.note import Checkpoint, CosignerKey
from cofre_evidence_verifier.report import Report
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import (
    ORIGIN,
    AuditKey,
    Bundle,
    build,
    day_log,
    witness,
    witnessed_note,
)

DEEP = "[" * 100_000 + "]" * 100_000
WITNESS = witness()


def _bundle() -> Bundle:
    """A genuine, signed and witnessed bundle: the edits below either re-sign it (as the
    key holder can) or not (anyone can; then the manifest or a file hash fails too)."""
    bundle = build(day_log(20), 3, 20, witnesses=[WITNESS])
    bundle.resign()
    return bundle


def _run(bundle: Bundle, tmp_path: Path, *, resign: bool = True) -> Report:
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz", resign=resign),
        bundle.key.pem,
        witness_keys=[WITNESS.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    return report


def test_the_genuine_bundle_verifies(tmp_path: Path) -> None:
    bundle = _bundle()
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[WITNESS.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok, report.problems


# --- JSON the parser must not follow ----------------------------------------------------
def test_deeply_nested_manifest(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.files["manifest.json"] = DEEP.encode()
    report = _run(bundle, tmp_path, resign=False)
    assert any("manifest.json" in p for p in report.problems), report.problems


def test_deeply_nested_jsonl_line(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.files["audit/heads.jsonl"] = DEEP.encode() + b"\n"
    report = _run(bundle, tmp_path, resign=False)
    assert any("line 1 is not a JSON object" in p for p in report.problems), report.problems


def test_deeply_nested_entry_payload(tmp_path: Path) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("audit/entries.jsonl")
    rows[0]["payload"] = DEEP
    bundle.set_jsonl("audit/entries.jsonl", rows)
    _run(bundle, tmp_path)


@pytest.mark.parametrize("number", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_a_tree_size_that_is_no_number(tmp_path: Path, number: bytes) -> None:
    bundle = _bundle()
    head = b'{"tree_size": %s, "checkpoint": "", "root_hash": ""}\n' % number
    bundle.files["audit/heads.jsonl"] = head
    report = _run(bundle, tmp_path, resign=False)
    assert any("line 1 is not a JSON object" in p for p in report.problems), report.problems


def test_load_json_limits() -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(nested) == load_json(nested.encode())
    # Brackets inside strings (escaped quotes included) are no nesting.
    assert load_json(json.dumps({"a": '\\"[' * 1000})) == {"a": '\\"[' * 1000}
    for text in ("[" + nested + "]", "NaN", '{"a": Infinity}', "1e999", "1" * 5000):
        with pytest.raises(ValueError, match=r"."):
            load_json(text)


# --- values of the wrong type -----------------------------------------------------------
def test_handover_line_without_note(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.files["audit/handovers.jsonl"] = b'{"not_note": 1}\n'
    report = _run(bundle, tmp_path, resign=False)
    assert any("handovers.jsonl: handover 1" in p for p in report.problems), report.problems


def test_entries_object_is_a_list(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.manifest["entries"] = []
    report = _run(bundle, tmp_path)
    assert any("manifest.json: entries" in p for p in report.problems), report.problems


def test_covering_head_is_a_string(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle.manifest["covering_head"] = "20"
    report = _run(bundle, tmp_path)
    assert any("manifest.json: covering_head" in p for p in report.problems), report.problems


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("period", []),
        ("period", {"from": 1, "to": 2}),
        ("files", {}),
        ("files", [{"path": "a"}]),
        ("entries", {"first_index": 3.0, "end_index": 20}),
        ("entries", {"first_index": True, "end_index": 20}),
        ("covering_head", {"tree_size": "20", "root_hash": "x"}),
        ("previous_head", 5),
        ("previous_head", {"tree_size": 1}),
    ],
)
def test_a_manifest_of_the_wrong_shape(tmp_path: Path, field: str, value: object) -> None:
    bundle = _bundle()
    bundle.manifest[field] = value
    bundle.resign(listing=False)
    report = _run(bundle, tmp_path, resign=False)
    assert any(f"manifest.json: {field}" in p for p in report.problems), report.problems


@pytest.mark.parametrize("payload", ["[]", "7", '"text"', "null"])
def test_entry_payload_is_not_an_object(tmp_path: Path, payload: str) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("audit/entries.jsonl")
    rows[0]["payload"] = payload
    bundle.set_jsonl("audit/entries.jsonl", rows)
    _run(bundle, tmp_path)


@pytest.mark.parametrize(
    "row",
    [
        {"index": "3", "payload": "{}"},
        {"index": 3, "payload": 7},
        {"index": 3.5, "payload": "{}"},
        {"payload": "{}"},
    ],
)
def test_entry_row_of_the_wrong_shape(tmp_path: Path, row: dict[str, object]) -> None:
    bundle = _bundle()
    bundle.set_jsonl("audit/entries.jsonl", [row])
    _run(bundle, tmp_path)


@pytest.mark.parametrize(
    "row",
    [
        {"index": 2, "payload": 7, "proof": []},
        {"index": 2, "payload": "[]", "proof": []},
        {"index": 2, "payload": "{}", "proof": "AAAA"},
        {"index": 2, "payload": "{}", "proof": [7]},
        {"index": "2", "payload": "{}", "proof": []},
    ],
)
def test_boundary_row_of_the_wrong_shape(tmp_path: Path, row: dict[str, object]) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("audit/boundaries.jsonl")
    bundle.set_jsonl("audit/boundaries.jsonl", [row, *rows[1:]])
    report = _run(bundle, tmp_path)
    assert any("boundaries.jsonl" in p and "2" in p for p in report.problems), report.problems


def test_policy_payload_details_not_an_object(tmp_path: Path) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("policy/versions.jsonl")
    rows[0]["payload"] = json.dumps({"action": "policy.load", "document": "", "details": []})
    bundle.set_jsonl("policy/versions.jsonl", rows)
    _run(bundle, tmp_path)


def test_deeply_nested_policy_document(tmp_path: Path) -> None:
    bundle = _bundle()
    rows = bundle.jsonl("policy/versions.jsonl")
    document = "a = " + "[" * 50_000 + "]" * 50_000
    rows[0]["payload"] = json.dumps({"action": "policy.load", "details": {}, "document": document})
    bundle.set_jsonl("policy/versions.jsonl", rows)
    _run(bundle, tmp_path)


@pytest.mark.parametrize(
    "custody",
    [b"[1]", b'[{"index": 3, "payload": "[]", "proof": []}]', DEEP.encode(), b"\xff"],
)
def test_custody_file_of_the_wrong_shape(tmp_path: Path, custody: bytes) -> None:
    bundle = _bundle()
    bundle.files["keys/custody.json"] = custody
    _run(bundle, tmp_path)


@pytest.mark.parametrize(
    "records",
    [
        b"[1]",
        b"{}",
        b'[{"index": 3, "payload": "[]", "proof": []}]',
        b'[{"index": "3", "payload": 3, "proof": "x"}]',
        DEEP.encode(),
        b"\xff",
    ],
)
def test_dual_control_file_of_the_wrong_shape(tmp_path: Path, records: bytes) -> None:
    bundle = _bundle()
    bundle.files["keys/dual_control.json"] = records
    report = _run(bundle, tmp_path)
    assert any("keys/dual_control.json" in p for p in report.problems), report.problems


def test_previous_bundle_with_a_list_period(tmp_path: Path) -> None:
    # --previous: the previous manifest is checked for its signature, then for its shape.
    w, key = witness(), AuditKey()
    before = build(day_log(20), 0, 3, size=20, key=key, witnesses=[w])
    before.manifest["period"] = []
    before.write(tmp_path / "prev.tar.gz")
    bundle = build(day_log(20), 3, 20, key=key, witnesses=[w])
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        key.pem,
        tmp_path / "prev.tar.gz",
        witness_keys=[w.verifier_key()],
    )
    assert not report.ok
    assert any("previous bundle: manifest.json: period" in p for p in report.problems)


def test_handover_to_an_ed25519_key(tmp_path: Path) -> None:
    """Operator-made: a handover from the pinned ECDSA key to a type-0x01 Ed25519 key,
    both signatures valid. The vault's audit key is ECDSA; the verifier refuses it."""
    bundle = _bundle()
    ed = CosignerKey.generate("cofre-audit/cofre")
    new = ed.note_verifier_key()
    text = handover_text(Checkpoint("cofre-audit/cofre", 5, b"\0" * 32), bundle.key.vkey(), new)
    note = handover_note(
        text, bundle.key.vkey(), bundle.key.sign(text.encode()), new, ed.sign_note(text).signature
    )
    bundle.files["audit/handovers.jsonl"] = (json.dumps({"note": note}) + "\n").encode()
    report = _run(bundle, tmp_path)
    assert any("ECDSA" in p for p in report.problems), report.problems


# --- whatever the bundle holds, a report ------------------------------------------------
MANGLED = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b'"x"',
    b"7",
    b"\xff\xfe",
    b"{" * 5000,
    DEEP.encode(),
    b'{"a": NaN}',
    b'{"a":',
]


@pytest.mark.parametrize(
    "name", sorted([*build(day_log(4), 1, 4).files, "manifest.json", "manifest.sig"])
)
def test_every_file_mangled_gives_a_report(tmp_path: Path, name: str) -> None:
    for data in MANGLED:
        for resign in (False, True):
            bundle = _bundle()
            bundle.files[name] = data
            report = verify_bundle(
                bundle.write(tmp_path / "b.tar.gz", resign=resign),
                bundle.key.pem,
                tmp_path / "b.tar.gz",
                witness_keys=[WITNESS.verifier_key()],
            )
            assert not report.ok, (name, data, resign)


def test_a_malformed_bundle_is_a_failed_verdict_at_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle()
    bundle.files["audit/heads.jsonl"] = DEEP.encode()
    (tmp_path / "audit.pem").write_bytes(bundle.key.pem)
    args = [str(bundle.write(tmp_path / "b.tar.gz", resign=False))]
    args += ["--public-key", str(tmp_path / "audit.pem"), "--origin", ORIGIN]
    args += ["--unsafe-no-witness"]
    assert main([*args, "--html", str(tmp_path / "r.html")]) == 1
    assert capsys.readouterr().out.startswith("FAILED\n")
    assert "FAILED" in (tmp_path / "r.html").read_text()


def test_a_cosignature_dated_past_year_9999_is_shown_as_seconds(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[])
    head = bundle.jsonl("audit/heads.jsonl")[0]
    bundle.files["audit/checkpoint.note"] = witnessed_note(bundle.key, head, [w], timestamp=1 << 62)
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok, report.problems
    assert any(f"at {1 << 62} s after 1970" in c for c in report.checks), report.checks


def test_a_manifest_listing_one_path_twice_is_refused(tmp_path: Path) -> None:
    """The verifier kept the last of two listings of one path, while the guide's
    `sha256sum -c` checks both: the two tools must not disagree on what was signed
    (the verifier review). The key holder re-signs the manifest here."""
    bundle = _bundle()
    listed = bundle.manifest["files"]
    first = next(f for f in listed if f["path"] == "policy/policy.toml")
    listed.insert(0, {**first, "sha256": "0" * 64})
    bundle.resign(listing=False)
    report = _run(bundle, tmp_path, resign=False)
    assert any("more than once" in p for p in report.problems), report.problems
