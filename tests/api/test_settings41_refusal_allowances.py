"""Session 41: the allowances of refusal entries of a service without a `rate_limit`
(`api._refusal_sieve`, sessions 39 and 40) are settings, not constants.

An operator whose audit log grows too fast under a flood of one such certificate's
refusals (or who must name more of the records it probed) could not change the
allowances short of a code change: 100 refusal entries, then one a second, and 1,000
about held token records, then one a second, per worker, fixed in the code. Now they
are ``COFRE_AUDIT__REFUSAL_ENTRIES_BURST`` / ``_PER_SECOND`` and
``COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_BURST`` / ``_PER_SECOND``, with the same defaults,
passed to the app by its factory. Here the variables are set, the settings loaded from
the environment as `cofre serve` loads them, and a real vault (real TLS, SoftHSM, SQLite
and PostgreSQL) follows them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from api._refusal_sieve import (
    COUNTED_ACTION,
    NAMED_REFUSALS,
    UNMETERED_REFUSALS,
    RefusalAllowances,
)
from api.pki import issue_client
from cofre.settings import Settings, load_settings
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.api.test_refusal40_named_refusals import BACKEND, SHOP_BACKEND, _payloads
from tests.support.pans import card_number

# Small allowances, refilled so slowly (one a day at most) that a test never sees a
# refill: what is written on its own is the burst, and the first of the episode.
UNMETERED_BURST = 3
NAMED_BURST = 5
SLOW = "0.0001"
PROBES = 12


def test_the_defaults_are_the_allowances_of_sessions_39_and_40() -> None:
    allowances = RefusalAllowances.from_settings(Settings().audit)
    assert allowances == RefusalAllowances()
    assert (allowances.unmetered, allowances.named) == (UNMETERED_REFUSALS, NAMED_REFUSALS)
    assert (UNMETERED_REFUSALS.burst, NAMED_REFUSALS.burst) == (100, 1000)
    assert UNMETERED_REFUSALS.per_second == NAMED_REFUSALS.per_second == 1.0


@pytest.mark.slow
def test_the_allowances_follow_the_environment_through_a_real_app(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COFRE_AUDIT__REFUSAL_ENTRIES_BURST", str(UNMETERED_BURST))
    monkeypatch.setenv("COFRE_AUDIT__REFUSAL_ENTRIES_PER_SECOND", SLOW)
    monkeypatch.setenv("COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_BURST", str(NAMED_BURST))
    monkeypatch.setenv("COFRE_AUDIT__NAMED_REFUSAL_ENTRIES_PER_SECOND", SLOW)
    # What `running_vault` sets for its heads, from the environment too.
    monkeypatch.setenv("COFRE_AUDIT__SIGN_EVERY_ENTRIES", "50")
    monkeypatch.setenv("COFRE_AUDIT__SIGN_EVERY_SECONDS", "1")
    audit = load_settings().audit

    with running_vault(
        tmp_path,
        hsm_provider,
        database_url,
        extra_policy=SHOP_BACKEND,
        audit=audit,
    ) as vault:
        issue_client(vault.pki, "shop-backend")
        with vault.client("payments") as payments:
            items = [{"pan": card_number("411111", i), "format": "uuid"} for i in range(PROBES)]
            made = payments.post("/v1/tokenize/batch", json={"items": items})
            assert made.status_code == 200, made.text
            tokens = [r["token"] for r in made.json()["results"]]
        before = len(_payloads(vault))
        with vault.client("shop-backend") as stolen:
            # Refusals about no held record: operations it was not granted.
            unmetered = [
                stolen.post(
                    "/v1/tokenize",
                    json={"pan": card_number("411111", 99), "format": "pan_bin6_last4"},
                )
                for _ in range(PROBES)
            ]
            # Refusals about held records: the full card behind its tokens.
            named = [stolen.post("/v1/detokenize", json={"token": t}) for t in tokens]
        assert {a.status_code for a in [*unmetered, *named]} == {403}, unmetered[0].text
    entries = [json.loads(p) for p in _payloads(vault)[before:]]
    vault.runtime.engine.dispose()
    mine = [e for e in entries if e["actor"] == BACKEND]
    counts = [e for e in mine if e["action"] == COUNTED_ACTION]
    by_limit: Counter[str] = Counter()
    for count in counts:
        by_limit[count["details"]["limit"]] += count["details"]["count"]

    # Each allowance's burst written on its own (and at most the first of the episode),
    # the rest counted: defaults of 100 and 1,000 would have written all 24.
    tokenize = [e for e in mine if e["action"] == "tokenize"]
    detokenize = [e for e in mine if e["action"] == "detokenize"]
    assert UNMETERED_BURST <= len(tokenize) <= UNMETERED_BURST + 1, len(tokenize)
    assert NAMED_BURST <= len(detokenize) <= NAMED_BURST + 1, len(detokenize)
    assert by_limit == {
        "refusal_entries": PROBES - len(tokenize),
        "named_refusal_entries": PROBES - len(detokenize),
    }
