"""The dev policy names payments' capture origins (a policy granting `capture` must), and
a dev environment whose policy an older `cofre dev` wrote without them keeps starting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cofre_cli.devenv import DEV_POLICY, ensure_dev_environment
from policies.errors import PolicyInvalid
from policies.loader import load_policy, parse_policy
from vault.capture import normalize_origin
from vault.errors import InvalidOrigin

PAYMENTS = "spiffe://cofre/payments"
# The capture origins block of the dev policy, as this version writes it.
ORIGINS_BLOCK = re.compile(
    r"(?m)^# The shop pages it may open capture sessions.*\n.*\n^capture_origins = .*\n"
)


def test_the_dev_policy_names_local_pages_only() -> None:
    """The pages the dev vault admits (`allow_http_localhost`): a production vault,
    which admits no http origin, opens no session for them."""
    origins = parse_policy(DEV_POLICY, kind="toml").policy.identities[PAYMENTS].capture_origins
    assert origins == frozenset({"http://localhost:3000", "http://127.0.0.1:3000"})
    for origin in origins:
        assert normalize_origin(origin, allow_http_localhost=True, frame_ancestor=True) == origin
        with pytest.raises(InvalidOrigin):
            normalize_origin(origin, frame_ancestor=True)


@pytest.mark.hsm  # `cofre dev` creates SoftHSM2 tokens
def test_an_untouched_older_dev_policy_gets_the_origins_and_an_edited_one_is_refused(
    tmp_path: Path,
) -> None:
    env = ensure_dev_environment(tmp_path / "dev", port=18443)
    policy_file = env.data_dir / "policy.toml"
    written = policy_file.read_text()
    older, removed = ORIGINS_BLOCK.subn("", written)
    assert removed == 1
    # As the previous `cofre dev` wrote it (officer keys and all): rewritten, it loads.
    policy_file.write_text(older)
    ensure_dev_environment(tmp_path / "dev", port=18443)
    assert policy_file.read_text() == written
    assert load_policy(policy_file).policy.identities[PAYMENTS].capture_origins
    # Edited by its developer: left alone, and refused at load with the identity named.
    edited = older.replace("burst = 4000", "burst = 4001")
    policy_file.write_text(edited)
    ensure_dev_environment(tmp_path / "dev", port=18443)
    assert policy_file.read_text() == edited
    with pytest.raises(
        PolicyInvalid, match=f"'{PAYMENTS}' may capture but names no capture_origins"
    ):
        load_policy(policy_file)
