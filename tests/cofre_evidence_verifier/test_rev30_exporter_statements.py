"""Review 30: the files of a bundle that only the vault's own key vouches for.

The auditor's guide maps `keys/inventory.json` to PCI DSS 3.7.7 ("`registered: false`
flags a key Cofre did not create"), `config/settings.json` to 2.2 and 3.2.1, and so on.
No check ties those files to the witnessed log: the manifest's signature (the HSM key)
is all that vouches for them, so whoever holds the HSM PIN can leave a key they made out
of the inventory, or change a setting, and re-sign the manifest. The bundle still
VERIFIES (a design bound: they are the exporter's statements at export), but the
report now says which files are such statements, so the auditor does not read them as
proven by the log.
"""

from __future__ import annotations

import json
from pathlib import Path

from cofre_evidence_verifier.verify import verify_bundle
from tests.support.evidence_bundles import ORIGIN, build, day_log, witness


def test_the_report_names_the_files_only_the_vaults_key_vouches_for(tmp_path: Path) -> None:
    w = witness()
    bundle = build(day_log(20), 3, 20, witnesses=[w])
    # The PIN holder's inventory: a rogue key on the HSM left out, or marked registered.
    bundle.files["keys/inventory.json"] = json.dumps(
        {"hsm_keys": [{"label": "cofre-kek-v1", "registered": True}]}
    ).encode()
    bundle.files["config/settings.json"] = b"{}"
    report = verify_bundle(
        bundle.write(tmp_path / "b.tar.gz"),
        bundle.key.pem,
        witness_keys=[w.verifier_key()],
        origin=ORIGIN,
    )
    assert report.ok, report.problems  # the bound: nothing in the log contradicts them
    [line] = [c for c in report.checks if c.startswith("NOT PROVEN by the log")]
    for name in ("config/settings.json", "keys/inventory.json", "requirements.md"):
        assert name in line
    for name in ("audit/entries.jsonl", "policy/versions.jsonl", "keys/custody.json"):
        assert name not in line
