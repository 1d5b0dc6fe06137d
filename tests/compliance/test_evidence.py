"""Evidence bundles: exported after a scripted day of traffic over real mTLS, verified
offline with only the public key; every kind of tampering named precisely."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PIL import Image

from audit.merkle import leaf_hash
from cofre_evidence_verifier import chain, policy
from cofre_evidence_verifier.html import render_html
from cofre_evidence_verifier.report import Report, render_text
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.support.chromium import offline_flags
from tests.support.leakscan import find_leaks
from tests.support.vault_evidence import (
    VAULT_ORIGIN,
    audit_entries,
    export_response,
    members,
    set_audit_entries,
    verify_unwitnessed,
    write_members,
)

PANS = ["4111111111111111", "5555555555554444", "4000000000000002"]
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def day(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, Path, bytes]]:
    tmp = tmp_path_factory.mktemp("evidence")
    with running_vault(tmp, hsm_provider) as vault:
        started = datetime.now(UTC) - timedelta(seconds=5)
        with vault.client("payments") as c:
            tokens = [
                c.post("/v1/tokenize", json={"pan": p, "format": "pan_bin6_last4"}).json()["token"]
                for p in PANS
            ]
            assert c.post("/v1/detokenize", json={"token": tokens[0]}).status_code == 403  # denial
        with vault.client("settlement") as c:
            for token in tokens:
                assert c.post("/v1/detokenize", json={"token": token}).status_code == 200
        with vault.client("stranger") as c:
            assert (
                c.post("/v1/tokenize", json={"pan": PANS[0], "format": "uuid"}).status_code == 403
            )
        vault.rotate_data_keys()
        response = export_response(vault, started)
        assert response.status_code == 200, response.text
        bundle = tmp / "day1.tar.gz"
        bundle.write_bytes(response.content)
        yield vault, bundle, hsm_provider.public_key_pem("cofre-audit-v1")


def test_day_of_traffic_verifies(day: tuple[VaultServer, Path, bytes]) -> None:
    _, bundle, public_key = day
    report = verify_unwitnessed(bundle, public_key)
    assert report.ok, report.problems
    files = members(bundle)
    for name in (
        "manifest.json",
        "manifest.sig",
        "audit/entries.jsonl",
        "audit/heads.jsonl",
        "audit/inclusion.jsonl",
        "keys/inventory.json",
        "keys/ceremonies.json",
        "policy/policy.toml",
        "policy/versions.jsonl",
        "config/settings.json",
        "tls/settings.json",
        "tls/certificates.json",
        "requirements.md",
    ):
        assert name in files
    entries = files["audit/entries.jsonl"].decode()
    for action in ("tokenize", "detokenize", "key.rotation.approve", "key.rotation.complete"):
        assert f'\\"action\\":\\"{action}\\"' in entries
    assert '\\"outcome\\":\\"denied\\"' in entries
    ceremonies = json.loads(files["keys/ceremonies.json"])
    assert ceremonies[0]["approvers"] == ["spiffe://cofre/officer-bob"]
    assert "3.7" in files["requirements.md"].decode()
    # PCI DSS 3.2.1: how long expired tokens may wait for their purge is in the bundle.
    settings = json.loads(files["config/settings.json"])
    assert settings["tokens"]["purge_interval_seconds"] == 300.0
    inventory = json.loads(files["keys/inventory.json"])
    kek = next(k for k in inventory["token_keys"] if k["label"].startswith("cofre-kek"))
    assert kek["sensitive"] is True
    assert kek["extractable"] is False


def test_no_pan_in_the_bundle(day: tuple[VaultServer, Path, bytes]) -> None:
    _, bundle, _ = day
    files = members(bundle)
    for name, raw in files.items():
        if name.endswith(".sig"):
            continue
        data = raw
        if name.endswith((".json", ".jsonl")):
            # Scan the strings: JSON numbers here are sizes, counts and epoch times.
            lines = raw.decode().splitlines()
            values = (
                [json.loads(line) for line in lines if line.strip()]
                if name.endswith(".jsonl")
                else [json.loads(raw)]
            )
            data = "\n".join(_strings(values)).encode()
        assert find_leaks(data, PANS) == [], name


def _strings(value: object) -> list[str]:
    if isinstance(value, str) and HEX_DIGEST.fullmatch(value):
        return []  # a SHA-256 in the manifest: hex, whose digit runs are noise
    if isinstance(value, str):
        try:
            return [value, *_strings(json.loads(value))]  # payloads are JSON in a string
        except ValueError:
            return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize(
    "name",
    [
        "audit/entries.jsonl",
        "audit/heads.jsonl",
        "keys/inventory.json",
        "requirements.md",
        "tls/certificates.json",
    ],
)
def test_one_byte_changed(day: tuple[VaultServer, Path, bytes], tmp_path: Path, name: str) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0x01
    files[name] = bytes(data)
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert not report.ok
    assert any(p.startswith(f"{name}:") for p in report.problems), report.problems


def test_manifest_changed(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    files["manifest.json"] = files["manifest.json"].replace(b'"generator"', b'"generatoR"')
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert any(p.startswith("manifest.sig:") for p in report.problems)


def test_file_removed(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    del files["keys/ceremonies.json"]
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert (
        "keys/ceremonies.json: listed in the manifest but missing from the bundle"
        in report.problems
    )


def test_entry_removed_from_the_middle(
    day: tuple[VaultServer, Path, bytes], tmp_path: Path
) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    entries = audit_entries(files)
    middle = len(entries) // 2
    gone = entries.pop(middle)
    set_audit_entries(files, entries)
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert (
        f"audit/entries.jsonl: entry {gone['index']} is missing (next is "
        f"{int(gone['index']) + 1})" in report.problems
    )  # type: ignore[call-overload]


def test_two_entries_swapped(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    entries = audit_entries(files)
    i = len(entries) // 2
    entries[i]["payload"], entries[i + 1]["payload"] = (
        entries[i + 1]["payload"],
        entries[i]["payload"],
    )
    set_audit_entries(files, entries)
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert any(f"first bad entry: index {entries[i]['index']}" in p for p in report.problems), (
        report.problems
    )


def test_head_signed_by_another_key(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    other = ec.generate_private_key(ec.SECP256R1())
    heads = [json.loads(line) for line in files["audit/heads.jsonl"].decode().splitlines()]
    for head in heads:
        head["signature"] = base64.b64encode(
            other.sign(head["checkpoint"].encode(), ec.ECDSA(hashes.SHA256()))
        ).decode()
    files["audit/heads.jsonl"] = "".join(json.dumps(h) + "\n" for h in heads).encode()
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert any(
        "signed by another key" in p and p.startswith("audit/heads.jsonl") for p in report.problems
    ), report.problems
    # And with the forger's key, the manifest itself does not verify.
    forged = other.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert not verify_unwitnessed(bundle, forged).ok


def test_period_cut_short(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    files = members(bundle)
    entries = audit_entries(files)
    set_audit_entries(files, entries[:-3])
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert any("the period was cut short" in p for p in report.problems), report.problems


def test_chain_and_fork(
    day: tuple[VaultServer, Path, bytes], tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    vault, first, public_key = day
    manifest = json.loads(members(first)["manifest.json"])
    head = manifest["covering_head"]
    with vault.client("payments") as c:
        c.post("/v1/tokenize", json={"pan": "4000000000000010", "format": "pan_last4"})
    # Chained as `cofre evidence export --previous` does: from where the previous ended.
    response = export_response(
        vault,
        manifest["period"]["to"],
        previous_head=head,
        previous_end_index=manifest["entries"]["end_index"],
    )
    assert response.status_code == 200, response.text
    second = tmp_path / "day2.tar.gz"
    second.write_bytes(response.content)
    report = verify_unwitnessed(second, public_key, previous=first)
    assert report.ok, report.problems
    assert any("consistent with the previous bundle" in c for c in report.checks)
    # A second vault with its own history, signed by the same HSM key: a fork. It will
    # not vouch for a previous head it never signed (tests/compliance/
    # test_evidence_bounds.py: a manifest that does anyway fails verification).
    with running_vault(tmp_path / "fork", hsm_provider) as forked_vault:
        since = datetime.now(UTC) - timedelta(seconds=1)
        with forked_vault.client("payments") as c:
            for pan in PANS:
                c.post("/v1/tokenize", json={"pan": pan, "format": "uuid"})
        fork = export_response(forked_vault, since, previous_head=head)
    assert fork.status_code == 422, fork.text
    assert "not a tree head this log signed" in fork.json()["detail"]


def test_chain_with_a_gap_fails(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    """The reviewer's finding: bundle B chained to A started after A ended, and the
    full-PAN detokenizes in between were in neither bundle, yet the chain verified."""
    vault, first, public_key = day
    manifest = json.loads(members(first)["manifest.json"])
    with vault.client("payments") as c:
        token = c.post("/v1/tokenize", json={"pan": PANS[1], "format": "pan_last4"}).json()
    with vault.client("settlement") as c:
        for _ in range(3):
            assert c.post("/v1/detokenize", json={"token": token["token"]}).status_code == 200
    vault.runtime.sequencer.drain(force_sign=True)
    time.sleep(0.05)
    later = datetime.now(UTC)
    head = manifest["covering_head"]
    # The vault refuses to build a chained bundle that would leave a gap ...
    refused = export_response(
        vault, later, previous_head=head, previous_end_index=manifest["entries"]["end_index"]
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "evidence_chain_broken"
    assert "in neither bundle" in refused.json()["detail"]
    # ... and a bundle that leaves one anyway (not told where A ended) fails verification.
    gapped = tmp_path / "gapped.tar.gz"
    gapped.write_bytes(export_response(vault, later, previous_head=head).content)
    report = verify_unwitnessed(gapped, public_key, previous=first)
    assert not report.ok
    end = manifest["entries"]["end_index"]
    assert any(
        p.startswith(f"chain: entries {end}..") and "are in neither bundle" in p
        for p in report.problems
    ), report.problems


def test_chain_with_an_overlap_fails(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    vault, first, public_key = day
    manifest = json.loads(members(first)["manifest.json"])
    head = manifest["covering_head"]
    start = manifest["period"]["from"]
    refused = export_response(
        vault, start, previous_head=head, previous_end_index=manifest["entries"]["end_index"]
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "evidence_chain_broken"
    assert "in both bundles" in refused.json()["detail"]
    overlapping = tmp_path / "overlap.tar.gz"
    overlapping.write_bytes(export_response(vault, start, previous_head=head).content)
    report = verify_unwitnessed(overlapping, public_key, previous=first)
    assert not report.ok
    first_index = manifest["entries"]["first_index"]
    assert any(
        p.startswith(f"chain: entries {first_index}..") and "are in both bundles" in p
        for p in report.problems
    ), report.problems


def test_bundle_has_the_policy_in_force_not_the_file_on_disk(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """The reviewer edited the policy file without a reload and the bundle shipped the
    edit: it disagreed with the policy the vault was running and with its own log."""
    public_key = hsm_provider.public_key_pem("cofre-audit-v1")
    with running_vault(tmp_path / "v", hsm_provider) as vault:
        since = datetime.now(UTC) - timedelta(seconds=5)
        policy_file = tmp_path / "v" / "policy.toml"
        running = policy_file.read_text()
        with vault.client("payments") as c:
            c.post("/v1/tokenize", json={"pan": PANS[0], "format": "pan_bin6_last4"})
        edited = running + (
            '\n[identities."spiffe://cofre/intruder"]\noperations = ["detokenize"]\n'
            'reveal = "full"\n'
        )
        policy_file.write_text(edited)
        first = tmp_path / "a.tar.gz"
        first.write_bytes(export_response(vault, since).content)
        files = members(first)
        assert files["policy/policy.toml"].decode() == running
        versions = [json.loads(line) for line in files["policy/versions.jsonl"].splitlines()]
        assert [json.loads(v["payload"])["action"] for v in versions] == ["policy.load"]
        loaded = json.loads(versions[0]["payload"])
        assert loaded["document"] == running
        assert loaded["details"]["sha256"] == hashlib.sha256(running.encode()).hexdigest()
        report = verify_unwitnessed(first, public_key)
        assert report.ok, report.problems
        assert any("policy versions in force" in c for c in report.checks)
        # A reload puts the edit in force, and the log records it (hash and text).
        assert vault.runtime.reload_policy() is True
        assert vault.runtime.reload_policy() is False  # unchanged: nothing recorded
        second = tmp_path / "b.tar.gz"
        second.write_bytes(export_response(vault, since).content)
        files = members(second)
        versions = [json.loads(line) for line in files["policy/versions.jsonl"].splitlines()]
        assert [json.loads(v["payload"])["action"] for v in versions] == [
            "policy.load",
            "policy.reload",
        ]
        assert files["policy/policy.toml"].decode() == edited
        report = verify_unwitnessed(second, public_key)
        assert report.ok, report.problems


def test_cli_verify(day: tuple[VaultServer, Path, bytes], tmp_path: Path) -> None:
    _, bundle, public_key = day
    pem = tmp_path / "audit.pem"
    pem.write_bytes(public_key)
    html = tmp_path / "report.html"
    command = [
        sys.executable,
        "-m",
        "cofre_cli",
        "evidence",
        "verify",
        str(bundle),
        "--public-key",
        str(pem),
        "--unsafe-no-witness",
        "--origin",
        VAULT_ORIGIN,
    ]
    result = subprocess.run(
        [*command, "--html", str(html)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("VERIFIED")
    page = html.read_text()
    assert "VERIFIED" in page
    # The timeline lists the heads that verified, with the key that verified each
    # (not the heads' unsigned times and key labels: review 33).
    assert "Signed tree heads (verified)" in page
    assert "<td>the pinned audit key</td>" in page
    as_json = json.loads(
        subprocess.run(
            [*command, "--json"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    )
    assert as_json["ok"] is True
    files = members(bundle)
    files["requirements.md"] += b"x"
    bad = write_members(tmp_path / "bad.tar.gz", files)
    result = subprocess.run(
        [*command[:5], str(bad), *command[6:]],  # the same command on the altered bundle
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "FAIL  requirements.md: content differs" in result.stdout


def test_bad_periods_are_problems(day: tuple[VaultServer, Path, bytes]) -> None:
    vault, _, _ = day
    now = datetime.now(UTC)
    with vault.client("auditor") as c:
        inverted = c.post(
            "/v1/evidence",
            json={"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()},
        )
        empty = c.post(
            "/v1/evidence", json={"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"}
        )
    for response in (inverted, empty):
        assert response.status_code == 422
        assert response.json()["code"] == "compliance_error"
    with vault.client("payments") as c:
        assert (
            c.post(
                "/v1/evidence", json={"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"}
            ).status_code
            == 403
        )


def _screenshot(page: Path, out: Path) -> tuple[Any, str]:
    """Render `page` in headless Chromium: the screenshot (a PIL image) and the DOM."""
    # Chromium's own profile is not the suite's output: outside the leak-scanned temp.
    with tempfile.TemporaryDirectory() as profile:
        return _render(page, out, Path(profile))


def _render(page: Path, out: Path, profile: Path) -> tuple[Any, str]:
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("headless Chromium is required: `make test` installs it", pytrace=False)
    # The flags keep Chromium off the network (this machine has none) and out of ~.
    flags = [
        "/usr/bin/chromium",
        *offline_flags(profile),
        "--window-size=1280,1600",
    ]
    url = page.resolve().as_uri()
    subprocess.run(
        [*flags, f"--screenshot={out}", url], capture_output=True, timeout=120, check=True
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return Image.open(out).convert("RGB"), dom


def _colours(image: Any) -> dict[tuple[int, int, int], int]:
    return {colour: count for count, colour in image.getcolors(maxcolors=1 << 24)}


GREEN, RED = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E)  # the page's ok and fail colours


def test_html_report_renders_in_a_browser(
    day: tuple[VaultServer, Path, bytes], tmp_path: Path
) -> None:
    """What a QSA sees: the verified report shows its green badge and no red; a
    tampered bundle's report shows red and names the problem."""
    _, bundle, public_key = day
    good = tmp_path / "good.html"
    good.write_text(render_html(verify_unwitnessed(bundle, public_key), bundle))
    files = members(bundle)
    files["requirements.md"] += b"x"
    bad_bundle = write_members(tmp_path / "bad.tar.gz", files)
    bad = tmp_path / "bad.html"
    bad.write_text(render_html(verify_unwitnessed(bad_bundle, public_key), bad_bundle))

    image, dom = _screenshot(good, tmp_path / "good.png")
    colours = _colours(image)
    assert image.size == (1280, 1600)
    assert "VERIFIED" in dom
    assert "Signed tree heads" in dom
    assert re.search(r"<td>3\.4</td>\s*<td>Mask PANs when displayed", dom)
    assert colours.get(GREEN, 0) > 500  # the badge and the check marks
    assert colours.get(RED, 0) == 0
    assert len(colours) > 50  # text was drawn (anti-aliased), not a blank page

    image, dom = _screenshot(bad, tmp_path / "bad.png")
    assert "FAILED" in dom
    assert "requirements.md: content differs" in dom
    assert _colours(image).get(RED, 0) > 500


def test_a_report_with_no_verdict_is_not_ok() -> None:
    """Fail closed: a report starts FAILED; only every required check passing makes it OK."""
    report = Report()
    assert not report.ok
    for check in sorted(report.required):
        report.passed(check, check)
    assert report.ok
    report.fail("one problem")
    assert not report.ok


def test_a_check_that_never_runs_fails_the_report(
    day: tuple[VaultServer, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bundle, public_key = day
    monkeypatch.setattr(policy, "check_policy", lambda *args, **kwargs: None)
    report = verify_unwitnessed(bundle, public_key)
    assert report.problems == []
    assert not report.ok
    assert report.missing_checks() == ["policy"]
    assert "FAIL  the policy check did not run to a verdict" in render_text(report)
    assert report.as_json()["missing_checks"] == ["policy"]


def test_previous_bundle_without_a_verified_head_fails(
    day: tuple[VaultServer, Path, bytes],
) -> None:
    """The previous-bundle check used to return silently when this bundle's covering head
    was not among the verified heads: now it fails."""
    _, bundle, public_key = day
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    report = Report(required=frozenset({"previous"}))
    chain.check_previous(files, manifest, {}, bundle, public_keys=[public_key], report=report)
    assert not report.ok
    assert any("no verified signed head" in problem for problem in report.problems)


def test_altered_entry_behind_its_original_subtree_hash(
    day: tuple[VaultServer, Path, bytes], tmp_path: Path
) -> None:
    """An attacker alters an entry and adds the original leaf's hash as a 'subtree' so
    the root would still recompute: the verifier hashes every entry of the period and
    refuses a subtree hash that stands in for one."""
    _, bundle, public_key = day
    files = members(bundle)
    entries = audit_entries(files)
    target = entries[len(entries) // 2]
    original = leaf_hash(str(target["payload"]).encode("utf-8"))
    target["payload"] = str(target["payload"]).replace('"outcome"', '"outcom3"')
    set_audit_entries(files, entries)
    files["audit/subtrees.jsonl"] += (
        json.dumps(
            {"level": 0, "index": target["index"], "hash": base64.b64encode(original).decode()}
        )
        + "\n"
    ).encode()
    report = verify_unwitnessed(write_members(tmp_path / "b.tar.gz", files), public_key)
    assert not report.ok
    assert any("does not match signed head" in p for p in report.problems), report.problems
