"""Attack review of session 36: one stolen certificate, one batch body, a worker's event
loop held for seconds.

A batch route takes a body of up to 4 MiB, and FastAPI validates it on the worker's
event loop. A body of the right shape whose one item carries a few hundred thousand
unknown members (``"k1": 1, "k2": 1, ...``), or a metadata object of as many entries each
refused, was answered one validation error per member: pydantic listed 300,000 errors,
FastAPI copied them and the problem handler masked each before keeping twenty, several
seconds of that loop (every connection the worker serves waits) for one request that
costs the caller a unit of its refusal bucket. A valid body of the same size costs
milliseconds. Now a body object with more unknown members than a mistake makes, and a
metadata object over its 16 entries, is one error, so the work is bounded by the 1,000
items, not by the members sent.

Counted, never timed: the number of errors the models make (the work every later step
repeats), and over real mutual TLS the answer (a 422 problem, no 500).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from api.guard import MAX_BATCH_BODY
from api.models import (
    DetokenizeBatchRequest,
    TokenizeBatchRequest,
    TokenizeRequest,
)
from tests.api.conftest import VaultServer

CARD = {"pan": "5555555555554444", "format": "uuid"}
MEMBERS = 250_000  # about what a 4 MiB body holds
REFUSED = 150_000  # entries of a refused value each ("\u0001" is six bytes of JSON)
# What a body may cost in errors: a handful per item of a full batch, whatever it holds.
BOUND = 8 * 1000

FLOODS: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "unknown members in an item": (
        TokenizeBatchRequest,
        {"items": [{**CARD, **{f"k{i}": 1 for i in range(MEMBERS)}}]},
    ),
    "unknown members beside the items": (
        TokenizeBatchRequest,
        {"items": [CARD], **{f"k{i}": 1 for i in range(MEMBERS)}},
    ),
    "metadata entries each refused": (
        TokenizeBatchRequest,
        {"items": [{**CARD, "metadata": {f"k{i}": "\u0001" for i in range(REFUSED)}}]},
    ),
    "unknown members beside the tokens": (
        DetokenizeBatchRequest,
        {"tokens": ["x"], **{f"k{i}": 1 for i in range(MEMBERS)}},
    ),
}


@pytest.mark.parametrize("flood", FLOODS.values(), ids=FLOODS.keys())
def test_a_body_s_errors_are_bounded_by_its_items_not_its_members(
    flood: tuple[type[BaseModel], dict[str, Any]],
) -> None:
    model, body = flood
    assert len(json.dumps(body)) <= MAX_BATCH_BODY
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    assert refused.value.error_count() <= BOUND


def test_a_mistake_is_still_named_member_by_member() -> None:
    with pytest.raises(ValidationError) as refused:
        TokenizeRequest.model_validate({**CARD, "colour": 1, "size": 2})
    assert sorted(e["loc"] for e in refused.value.errors()) == [("colour",), ("size",)]
    with pytest.raises(ValidationError) as refused:
        TokenizeRequest.model_validate({**CARD, "metadata": {"a": "\u0001", "b": "ok"}})
    assert [e["loc"] for e in refused.value.errors()] == [("metadata", "a")]


def test_a_flood_is_answered_a_problem(vault_server: VaultServer) -> None:
    _, body = FLOODS["unknown members in an item"]
    with vault_server.client("payments") as client:
        answer = client.post("/v1/tokenize/batch", json=body)
    assert answer.status_code == 422, answer.text[:300]
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "invalid_request"
