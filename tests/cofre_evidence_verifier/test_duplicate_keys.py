"""A JSON object with a key twice is refused anywhere in a bundle (review 33): Python's
parser keeps the last value, another reader may keep the first, so a key holder could
sign one file that two tools check as two different contents. Each bundle below puts a
decoy value first and the genuine one last: the standard parser reads the genuine
bundle, which verified before the key was refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cofre_evidence_verifier.bundle import load_json
from cofre_evidence_verifier.errors import MalformedBundle
from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, Bundle, build, day_log, witness

WITNESS = witness()


def _decoy_first(line: str, decoy: object = "decoy") -> str:
    """`line` (one JSON object) with its first key given once more, before it, with
    `decoy`: the same object to a parser that keeps the last value."""
    key = next(iter(json.loads(line)))
    doubled = "{" + json.dumps(key) + ": " + json.dumps(decoy) + ", " + line.lstrip()[1:]
    assert json.loads(doubled) == json.loads(line)
    return doubled


def _verify(bundle: Bundle, tmp_path: Path) -> list[str]:
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz", resign=False),
        bundle.key.pem,
        witness_keys=[WITNESS.verifier_key()],
        origin=ORIGIN,
    )
    assert not report.ok
    return report.problems


def test_load_json_refuses_a_key_twice_at_any_depth() -> None:
    assert load_json('{"a": {"b": [{"c": 1, "d": 2}]}}') == {"a": {"b": [{"c": 1, "d": 2}]}}
    for text in ('{"a": 1, "a": 1}', '{"a": {"b": [{"c": 1, "c": 2}]}}', '[{"x": 0, "x": 1}]'):
        with pytest.raises(MalformedBundle, match=r"has the key '[acx]' twice"):
            load_json(text)


@pytest.mark.parametrize(
    "name",
    [
        "audit/heads.jsonl",
        "audit/entries.jsonl",
        "audit/boundaries.jsonl",
        "audit/subtrees.jsonl",
        "audit/inclusion.jsonl",
        "policy/versions.jsonl",
    ],
)
def test_a_key_twice_in_a_signed_jsonl_file(tmp_path: Path, name: str) -> None:
    bundle = build(day_log(20), 3, 20, witnesses=[WITNESS])
    first, *rest = bundle.files[name].decode().splitlines(keepends=True)
    bundle.files[name] = (_decoy_first(first) + "\n" + "".join(rest)).encode()
    bundle.resign()  # as the key holder can: the manifest lists the file as it is
    problems = _verify(bundle, tmp_path)
    assert any(f"{name}: line 1" in p and "twice" in p for p in problems), problems


def test_a_key_twice_in_the_signed_manifest(tmp_path: Path) -> None:
    bundle = build(day_log(20), 3, 20, witnesses=[WITNESS])
    bundle.resign()
    # The covering root: "x" to a reader that keeps the first value.
    manifest = bundle.files["manifest.json"].decode()
    doubled = manifest.replace('"covering_head": {', '"covering_head": {"root_hash": "x", ', 1)
    assert doubled != manifest
    assert json.loads(doubled) == json.loads(manifest)
    bundle.files["manifest.json"] = doubled.encode()
    bundle.files["manifest.sig"] = bundle.key.sign(doubled.encode())
    problems = _verify(bundle, tmp_path)
    assert any(p.startswith("manifest.json: ") and "twice" in p for p in problems), problems


def test_a_key_twice_in_the_custody_file(tmp_path: Path) -> None:
    bundle = build(day_log(20), 3, 20, witnesses=[WITNESS])
    bundle.files["keys/custody.json"] = b'[{"index": 1, "index": 2}]'
    bundle.resign()
    problems = _verify(bundle, tmp_path)
    assert any(p.startswith("keys/custody.json: ") and "twice" in p for p in problems), problems
