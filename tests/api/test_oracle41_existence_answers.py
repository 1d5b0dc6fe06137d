"""Session 41: the other answers a stolen certificate gets, asked whether another owner's
token, or idempotency key, exists (the denied path's work: test_oracle41_denied_work.py).

- The request metrics (what `/metrics` shows an operator's scraper, and anyone it is
  exposed to): a run of denials of tokens the vault holds moves exactly the series, by
  exactly the counts, that a run of denials of tokens it does not hold moves; no series
  and no span attribute carries a token or a record id.
- An idempotency key another domain used: a caller of its own domain sending the same
  key (with the same card, or another) is answered as for a key never used, never the
  other domain's token nor a conflict.

Real TLS, SoftHSM, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api.pki import issue_client
from hsm.provider import HSMProvider
from tests.api.conftest import VaultServer, running_vault
from tests.api.test_oracle41_denied_work import DENIED, OTHER_DOMAIN
from tests.api.test_refusal40_named_refusals import SHOP_BACKEND
from tests.support.pans import card_number

_ROUNDS = 3


def _series(vault: VaultServer) -> Counter[tuple[str, str]]:
    """Each request series (a metric and its attributes) and its count so far: a sum's
    value, a histogram's number of observations."""
    data = vault.metrics.get_metrics_data()
    found: Counter[tuple[str, str]] = Counter()
    if data is None:
        return found
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if not metric.name.startswith(("cofre.http", "http.")):
                    continue
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    attrs = json.dumps(dict(point.attributes or {}), sort_keys=True)
                    count = getattr(point, "count", None)
                    found[metric.name, attrs] += int(
                        count if count is not None else getattr(point, "value", 0)
                    )
    return found


def _moved(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> dict[Any, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _record(vault: VaultServer, token: str) -> str:
    with vault.runtime.engine.connect() as connection:
        found = connection.execute(
            sa.text("SELECT id FROM tokens WHERE token = :t"), {"t": token}
        ).scalar_one()
    return str(found)


@pytest.mark.slow
def test_request_metrics_and_spans_do_not_tell_a_held_token(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url, extra_policy=SHOP_BACKEND) as vault:
        issue_client(vault.pki, "shop-backend")
        with vault.client("store") as store:
            made = store.post(
                "/v1/tokenize", json={"pan": card_number("411111", 3), "format": "uuid"}
            )
        assert made.status_code in (200, 201), made.text
        held = made.json()["token"]
        routes = DENIED | OTHER_DOMAIN
        moved = []
        with vault.client("shop-backend") as stolen:
            for token in (held, str(uuid.uuid4())):
                before = _series(vault)
                for _ in range(_ROUNDS):
                    for probe in routes.values():
                        assert probe(stolen, token).status_code in (403, 404)
                # The last request's series are written as its answer goes: one more
                # request, not a clock, makes sure they are all in.
                stolen.get("/livez")
                moved.append(_moved(before, _series(vault)))
        assert moved[0], "no request series moved: the probe reads nothing"
        assert moved[0] == moved[1]
        record = _record(vault, held)
        spans = "\n".join(s.to_json() for s in vault.spans.get_finished_spans())
        metrics = vault.metrics.get_metrics_data()
        shown = spans + (metrics.to_json() if metrics is not None else "")
        assert held not in shown
        assert record not in shown


@pytest.mark.slow
def test_an_idempotency_key_of_another_domain_is_a_new_key(
    tmp_path: Path, hsm_provider: HSMProvider, database_url: str
) -> None:
    with running_vault(tmp_path, hsm_provider, database_url) as vault:
        cards = [card_number("411111", n) for n in range(11, 15)]
        theirs = []
        with vault.client("payments") as payments:
            for key, pan in (("order-1", cards[0]), ("order-2", cards[1])):
                answer = payments.post(
                    "/v1/tokenize", json={"pan": pan, "format": "uuid", "idempotency_key": key}
                )
                assert answer.status_code in (200, 201), answer.text
                theirs.append(answer.json()["token"])
        answers = []
        with vault.client("store") as store:  # its own domain
            # Payments' key with payments' card, payments' key with another card, and a
            # key nobody used: each answered as a key never used.
            for key, pan in (("order-1", cards[0]), ("order-2", cards[2]), ("fresh", cards[3])):
                answer = store.post(
                    "/v1/tokenize", json={"pan": pan, "format": "uuid", "idempotency_key": key}
                )
                assert answer.status_code == 200, answer.text
                answers.append(answer)
        tokens = [a.json()["token"] for a in answers]
        assert not set(theirs) & set(tokens)
        assert len(set(tokens)) == 3
        shapes = [
            sorted((k, v) for k, v in a.headers.items() if k not in {"date", "x-request-id"})
            for a in answers
        ]
        assert shapes[0] == shapes[1] == shapes[2]
        assert sorted(answers[0].json()) == sorted(answers[1].json()) == sorted(answers[2].json())
