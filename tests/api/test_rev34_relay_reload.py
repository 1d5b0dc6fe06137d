"""Review 34, end to end: a policy reload (what SIGHUP does) that changes a relay route's
`ca_bundle` is in force for the route's next relay. Before, the route's TLS trust was
read at its first relay and kept: after the reload took the acquirer's CA out of the
route's trust, the next relay still sent the card to it (`vault.relay_client`)."""

from __future__ import annotations

from pathlib import Path

from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_relay_answer_encoding_attacks import _policy, relay_card
from tests.support.fake_acquirer import FakeAcquirer


def test_a_reload_that_changes_a_routes_ca_bundle_is_in_force_for_its_next_relay(
    tmp_path: Path, hsm_provider: HSMProvider, acquirer: FakeAcquirer
) -> None:
    with running_vault(tmp_path, hsm_provider, extra_policy=_policy(acquirer)) as vault:
        body = {"card": relay_card(vault)}
        with vault.client("checkout") as checkout:
            assert checkout.post("/v1/relay/acq", json=body).status_code == 200
        # The route now trusts another CA only (the acquirer's was compromised).
        policy_file = Path(vault.runtime.settings.policy_file)
        text = policy_file.read_text()
        trusted = str(acquirer.ca)  # type: ignore[attr-defined]
        assert trusted in text
        policy_file.write_text(text.replace(trusted, str(vault.other_pki.ca)))
        assert vault.runtime.reload_policy()
        with vault.client("checkout") as checkout:
            refused = checkout.post("/v1/relay/acq", json=body)
    assert refused.status_code == 502, refused.text
    assert refused.json()["code"] == "upstream_unavailable"
    assert len(acquirer.received) == 1
