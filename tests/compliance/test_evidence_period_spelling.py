"""Review 30: the PIN holder re-cuts a bundle and spells the period's ends with a UTC
offset. The instants are the genuine period's, but the verifier compares strings, so
entries of the period were left out unseen, and an end that sorts before the start let
an empty range pass. The verifier now takes only the vault's own spelling (UTC,
microseconds, ``Z``) and a period that starts before it ends. The reviewer's tests,
kept as they were written (each failed before the fix)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from audit.merkle import hash_b64
from audit.store import AuditStore
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.compliance.test_evidence_boundaries import _forge, _range
from tests.support.vault_evidence import (
    audit_entries,
    export_response,
    members,
    verify_unwitnessed,
    write_members,
)


@pytest.fixture(scope="module")
def two_seconds(
    tmp_path_factory: pytest.TempPathFactory, hsm_provider: HSMProvider
) -> Iterator[tuple[VaultServer, Path, bytes]]:
    """Entries in two bursts two seconds apart."""
    tmp = tmp_path_factory.mktemp("review30")
    with running_vault(tmp, hsm_provider) as vault:
        started = datetime.now(UTC) - timedelta(seconds=5)
        with vault.client("payments") as client:
            for burst in range(2):
                for _ in range(6):
                    body = {"pan": "4111111111111111", "format": "uuid"}
                    assert client.post("/v1/tokenize", json=body).status_code in (200, 201)
                if not burst:
                    time.sleep(2.2)
        time.sleep(2.2)
        response = export_response(vault, started)
        assert response.status_code == 200, response.text
        bundle = tmp / "bundle.tar.gz"
        bundle.write_bytes(response.content)
        yield vault, bundle, hsm_provider.public_key_pem("cofre-audit-v1")


def _boundaries(vault: VaultServer, indices: list[int], size: int) -> bytes:
    store = AuditStore(vault.runtime.engine)
    out = []
    for index in indices:
        if index < 0:
            continue
        [(_, payload)] = store.entries_page(index, index + 1, 1)
        proof = [hash_b64(h) for h in store.inclusion_proof(index, size)]
        out.append(json.dumps({"index": index, "payload": payload, "proof": proof}) + "\n")
    return "".join(out).encode()


def _spelled(at: datetime, local: str) -> str:
    """`at` written with a whole-second offset that puts its wall-clock text at or
    just before the entry time `local` (so it sorts before `local`): the same instant."""
    wall = datetime.fromisoformat(local.replace("Z", "+00:00"))
    offset = timedelta(seconds=-int((at - wall).total_seconds() + 0.999999))
    text = at.astimezone(timezone(offset)).isoformat(timespec="microseconds")
    assert text < local, (text, local)
    assert datetime.fromisoformat(text) == at
    return text


def _time(payload: str) -> str:
    return str(json.loads(payload)["time"])


def test_offset_spelled_end_hides_the_periods_last_entries(
    two_seconds: tuple[VaultServer, Path, bytes], tmp_path: Path
) -> None:
    vault, bundle, public_key = two_seconds
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    start, end = _range(files)
    size = int(manifest["covering_head"]["tree_size"])
    times = {int(e["index"]): _time(str(e["payload"])) for e in audit_entries(files)}
    # The second burst: the first entry more than a second after the one before it.
    cut = next(
        i
        for i in range(start + 1, end)
        if times[i][:19] > times[i - 1][:19]
        and datetime.fromisoformat(times[i]) - datetime.fromisoformat(times[i - 1])
        > timedelta(seconds=1.5)
    )
    genuine_to = datetime.fromisoformat(manifest["period"]["to"].replace("Z", "+00:00"))
    manifest["period"]["to"] = _spelled(genuine_to, times[cut])  # same instant
    assert all(times[i] < manifest["period"]["to"] for i in range(start, cut))
    files["manifest.json"] = json.dumps(manifest).encode()
    files["audit/boundaries.jsonl"] = _boundaries(vault, [start - 1, cut], size)
    forged = _forge(vault, files, start, cut, tmp_path / "forged.tar.gz")
    report = verify_unwitnessed(forged, public_key)
    # The forged manifest names exactly the genuine period, yet entries cut..end-1 of
    # it are not in the bundle.
    assert not report.ok, f"VERIFIED with entries {cut}..{end - 1} left out: {report.checks}"


def test_offset_spelled_period_with_no_entries_verifies(
    exported: tuple[VaultServer, Path, bytes],
    tmp_path: Path,
) -> None:
    vault, bundle, public_key = exported
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    start, end = _range(files)
    size = int(manifest["covering_head"]["tree_size"])
    genuine_to = datetime.fromisoformat(manifest["period"]["to"].replace("Z", "+00:00"))
    first = _time(AuditStore(vault.runtime.engine).entries_page(start, start + 1, 1)[0][1])
    # `to` spelled an hour early on the wall clock with "-01:00": the same instant.
    manifest["period"]["to"] = genuine_to.astimezone(timezone(-timedelta(hours=1))).isoformat()
    assert manifest["period"]["to"] <= first
    files["manifest.json"] = json.dumps(manifest).encode()
    files["audit/boundaries.jsonl"] = _boundaries(vault, [start - 1, start], size)
    forged = _forge(vault, files, start, start, tmp_path / "forged.tar.gz")
    report = verify_unwitnessed(forged, public_key)
    assert not report.ok, f"VERIFIED with all {end - start} entries left out: {report.checks}"


def test_infinite_index_in_boundaries_is_a_verdict_not_a_crash(
    exported: tuple[VaultServer, Path, bytes],
    tmp_path: Path,
) -> None:
    _vault, bundle, public_key = exported
    files = members(bundle)
    files["audit/boundaries.jsonl"] = b'{"index": 1e400, "payload": "{}", "proof": []}\n'
    tampered = write_members(tmp_path / "tampered.tar.gz", files)
    report = verify_unwitnessed(tampered, public_key)  # raised OverflowError on main
    assert not report.ok
