"""`POST /v1/tokenize/batch` answers the bytes its model would have.

The route writes `TokenizeBatchResponse`'s JSON from the items' fields without
validating a model per item (issue 21); the model path it replaced is kept here as the
reference, and every record the vault can answer must come out byte for byte the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from api.models import TokenizeBatchResponse
from api.routes.tokens import _batch_json, _json, _token_fields, _token_json, _token_response
from vault.models import TokenRecord


def _reference(records: list[TokenRecord]) -> tuple[bytes, dict[str, str]]:
    """The answer as the route made it before: one model validated, then dumped."""
    answer = _json(
        TokenizeBatchResponse.model_validate({"results": [_token_fields(r) for r in records]})
    )
    return bytes(answer.body), dict(answer.headers)


def _answered(records: list[TokenRecord]) -> tuple[bytes, dict[str, str]]:
    answer = _batch_json([_token_fields(r) for r in records])
    return bytes(answer.body), dict(answer.headers)


_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
_times = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=_offsets),
    st.datetimes(timezones=st.timezones()),
    st.datetimes(),  # naive: the model kept them as they were
)
_records = st.builds(
    TokenRecord,
    token=st.text(max_size=64),
    token_id=st.one_of(st.uuids().map(str), st.text(max_size=40)),
    format=st.text(max_size=64),
    created_at=_times,
    expires_at=st.none() | _times,
    metadata=st.dictionaries(st.text(max_size=64), st.text(max_size=256), max_size=16),
    existing=st.booleans(),
)


@given(st.lists(_records, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_the_answer_is_the_models_bytes(records: list[TokenRecord]) -> None:
    assert _answered(records) == _reference(records)


def test_a_full_batch_of_fresh_tokens_is_the_models_bytes() -> None:
    now = datetime(2026, 12, 5, 9, 41, 44, 123456, tzinfo=UTC)
    records = [
        TokenRecord(
            token=f"411111{n:06d}1111",
            token_id=f"00000000-0000-4000-8000-{n:012d}",
            format="pan_bin6_last4",
            created_at=now,
            expires_at=None if n % 3 else now + timedelta(seconds=n),
            metadata={} if n % 5 else {"order": str(n), 'é\u2028"\\': "\x00\ud7ff"},
            existing=n % 7 == 0,
        )
        for n in range(1000)
    ]
    assert _answered(records) == _reference(records)


def _fields(field: str, value: object) -> dict[str, object]:
    return {
        "token": "tok",
        "token_id": "id",
        "format": "uuid",
        "created_at": datetime(2026, 12, 5, tzinfo=UTC),
        "expires_at": None,
        "metadata": {},
        "existing": False,
        field: value,
    }


@pytest.mark.parametrize(("field", "value"), [("token", 4111), ("metadata", {"n": 1})])
def test_a_value_the_model_refused_is_refused(field: str, value: object) -> None:
    # Never from the vault (its `TokenRecord` types), but if one came it fails the call
    # (a 500 by the app's handler) as the model's validation did, and does not go out.
    with pytest.raises(ValidationError):
        TokenizeBatchResponse.model_validate({"results": [_fields(field, value)]})
    with pytest.raises(PydanticSerializationError):
        _batch_json([_fields(field, value)])


@pytest.mark.parametrize(
    ("field", "value"),
    [("created_at", "2026-12-05T09:41:44Z"), ("expires_at", 3), ("existing", "yes")],
)
def test_a_value_of_another_type_is_refused_not_converted(field: str, value: object) -> None:
    # The model's lax validation converted these (a string or a number to a time, "yes"
    # to true); the vault never answers them, and the route now refuses them rather
    # than guess.
    with pytest.raises(PydanticSerializationError):
        _batch_json([_fields(field, value)])


def _one_reference(record: TokenRecord) -> tuple[bytes, dict[str, str]]:
    """A single tokenize's answer as the route made it before session 38: its model
    validated, then dumped."""
    answer = _json(_token_response(record))
    return bytes(answer.body), dict(answer.headers)


@given(_records)
@settings(max_examples=300, deadline=None)
def test_a_single_answer_is_the_models_bytes(record: TokenRecord) -> None:
    answer = _token_json(record)
    assert (bytes(answer.body), dict(answer.headers)) == _one_reference(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [("token", 4111), ("metadata", {"n": 1}), ("created_at", "2026-12-05"), ("existing", "yes")],
)
def test_a_single_answer_refuses_a_value_of_another_type(field: str, value: object) -> None:
    record = TokenRecord(**_fields(field, value))  # type: ignore[arg-type]
    with pytest.raises(PydanticSerializationError):
        _token_json(record)
