"""atk46 (session 46's attacker): one lookup answered, decrypted and audited every token
a card has in the caller's domain, for one unit of the rate limit and without bound.

A format with ``dedup = "random"`` (docs/threat-model.md recommends it where 8-digit
BINs are shown) issues a new token for the same card on every call. A stolen
certificate granted tokenize and lookup tokenized one card N times (N units, once), and
then every `POST /v1/lookup` of it cost one unit and made the vault decrypt N rows, write
N audit entries in one transaction and send N tokens: 3,000 for one unit, 20,000 in
2.3 s while another identity's write waited on SQLite. Every other multi-item request is
bounded (a batch: 1,000 items, costing 1,000).

Now a lookup answers at most `MAX_LOOKUP_TOKENS` tokens (the oldest), and no more than
the caller's bucket has room for when it begins, says ``"truncated": true`` when the
card has more, and costs what it answers (one unit when it finds none), as a batch costs
its items: one unit in its transaction, the rest after its commit, as many as the
bucket then has (review 46b).

Real mutual TLS, SoftHSM2, SQLite.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import running_vault
from tests.support.pans import card_number
from vault.service import MAX_LOOKUP_TOKENS

MORE = MAX_LOOKUP_TOKENS + 20

POLICY = f"""
[formats.card_random]
type = "random"
dedup = "random"

[identities."spiffe://cofre/atk46-shop"]
operations = ["tokenize", "lookup"]
formats = ["card_random"]
reveal = "none"
# Its tokenizes (MORE + 3), a lookup of three, one of a page, and five more: one unit a
# second refills it, so a second lookup of a page finds room for a few tokens only.
rate_limit = {{ per_second = 1, burst = {MORE + 3 + 3 + MAX_LOOKUP_TOKENS + 5} }}
"""


def _entries(vault: object) -> int:
    with vault.runtime.engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar_one())


def test_a_lookup_answers_a_bounded_page_and_costs_what_it_answers(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    with running_vault(tmp_path, hsm_provider, extra_policy=POLICY) as vault:
        issue_client(vault.pki, "atk46-shop")
        many, few = card_number("455555", 46), card_number("455556", 46)
        with vault.client("atk46-shop") as shop:
            made = shop.post(
                "/v1/tokenize/batch",
                json={"items": [{"pan": many, "format": "card_random"}] * MORE},
            )
            assert made.status_code == 200, made.text
            for _ in range(3):
                assert shop.post(
                    "/v1/tokenize", json={"pan": few, "format": "card_random"}
                ).status_code in (200, 201)
            issued = [item["token"] for item in made.json()["results"]]

            small = shop.post("/v1/lookup", json={"pan": few})
            assert small.status_code == 200, small.text
            assert len(small.json()["tokens"]) == 3
            assert small.json()["truncated"] is False

            before = _entries(vault)
            found = shop.post("/v1/lookup", json={"pan": many})
            written = _entries(vault) - before
            assert found.status_code == 200, found.text
            body = found.json()
            answered = [t["token"] for t in body["tokens"]]
            assert len(answered) == MAX_LOOKUP_TOKENS, (
                f"one lookup answered {len(answered)} tokens of {MORE}"
            )
            assert body["truncated"] is True
            # Tokens of the card, each once (one batch: one creation time, so which of
            # them form the page is the statement's order by id, not the items').
            assert len(set(answered)) == len(answered)
            assert set(answered) <= set(issued)
            assert written == MAX_LOOKUP_TOKENS  # one entry a token answered

            # It cost what it answered: the same lookup again finds the bucket short, and
            # is answered what the bucket has room for, truncated (a 429 there would
            # depend on how many tokens the card has, and a charge refused in the
            # commit group would roll back the group's other calls).
            again = shop.post("/v1/lookup", json={"pan": many})
            assert again.status_code == 200, again.text
            short = len(again.json()["tokens"])
            assert 1 <= short < MAX_LOOKUP_TOKENS // 2, (
                f"a second lookup was answered {short} tokens: the first cost less than "
                f"the {MAX_LOOKUP_TOKENS} it answered"
            )
            assert again.json()["truncated"] is True


def test_lookups_at_once_answer_no_more_than_the_bucket_pays_for(
    tmp_path: Path, hsm_provider: HSMProvider
) -> None:
    """Review 46b: sized from one read of the bucket each and charged in full in the
    commit group, lookups at once could be refused at the group's commit, rolling its
    other calls back; charged one unit in the group and the rest after, four lookups at
    once each answered a page for one page's units. Now one lookup of an identity at a
    time per process goes from its read of the bucket to its charge after the commit:
    together they answer no more tokens than the bucket had units (plus what it refilled
    meanwhile, one a second), each refusal is the plain `rate_limited` of a spent
    bucket, and none is refused in a commit group."""
    with running_vault(tmp_path, hsm_provider, extra_policy=POLICY) as vault:
        issue_client(vault.pki, "atk46-shop")
        many = card_number("455557", 46)
        with vault.client("atk46-shop") as shop:
            made = shop.post(
                "/v1/tokenize/batch",
                json={"items": [{"pan": many, "format": "card_random"}] * MORE},
            )
            assert made.status_code == 200, made.text
        started = time.monotonic()
        answers: list[httpx.Response] = []

        def look() -> None:
            with vault.client("atk46-shop") as own:
                answers.append(own.post("/v1/lookup", json={"pan": many}))

        callers = [threading.Thread(target=look) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
        took = time.monotonic() - started
        assert len(answers) == 4
        for answer in answers:
            assert answer.status_code in (200, 429), answer.text
            if answer.status_code == 429:
                assert answer.json()["code"] == "rate_limited", answer.text
        answered = [len(a.json()["tokens"]) for a in answers if a.status_code == 200]
        assert max(answered) == MAX_LOOKUP_TOKENS
        # The bucket's room when they began (its burst less the batch), and what one
        # unit a second refilled while they ran (the time read, not judged).
        room = (MORE + 3 + 3 + MAX_LOOKUP_TOKENS + 5) - MORE + int(took) + 2
        assert sum(answered) <= room, (
            f"four lookups at once answered {answered} tokens for a bucket of {room} units"
        )
