"""Routes of the `tokens` area: tokenize, detokenize, lookup, token metadata, update,
delete.

IN PCI SCOPE. A PAN arrives in a request model and is wrapped in `vault.pan.Pan` at
once; a response carries it in clear only from `detokenize` to a caller whose policy
reveals it.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from api.dependencies import Caller, State, TokenPath, app_state, call_context
from api.models import (
    DeleteResponse,
    DetokenizeBatchRequest,
    DetokenizeBatchResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    LookupRequest,
    LookupResponse,
    MaskedResponse,
    TokenizeBatchRequest,
    TokenizeBatchResponse,
    TokenizeRequest,
    TokenResponse,
    TokenUpdateRequest,
)
from api.routes._offload import answered, answered_on_loop, finished
from cofre.errors import CofreError
from vault.card import SecurityCode
from vault.errors import BatchItemInvalid
from vault.pan import Pan
from vault.service import Revealed, TokenRecord, TokenUpdate, naming_token
from vault.service import TokenizeRequest as ServiceTokenizeRequest

router = APIRouter()

# The hot routes are `async def` and hop to a thread once, for the vault call
# (`api.routes._offload`); the single-item ones leave that thread once the call is
# handed to the group committer and wait for the commit on the event loop
# (`answered`), and begin there without the hop at all while nothing in their start
# waits (`answered_on_loop`). The others stay plain `def` (two anyio hops each).
#
# The single-item hot routes also take the `Request` and read the caller and the app
# state from it (`call_context`, `app_state`: what `Caller` and `State` return), and
# answer their model's JSON themselves (`_json`). Each `Depends` is a nested
# `solve_dependencies` per request, and FastAPI validates a returned model again
# against the `response_model` before serialising it: together ~80 us of a ~500 us
# HTTP path per request (issue 21). `response_model` still documents the answer.


def _json(model: BaseModel) -> Response:
    """`model`, built (and so validated) by the route, as the JSON body FastAPI would
    have sent for it."""
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


def _token_fields(record: TokenRecord) -> dict[str, object]:
    """`record` as `TokenResponse`'s fields."""
    return {
        "token": record.token,
        "token_id": record.token_id,
        "format": record.format,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "metadata": dict(record.metadata),
        "existing": record.existing,
    }


def _token_response(record: TokenRecord) -> TokenResponse:
    return TokenResponse.model_validate(_token_fields(record))


# `TokenizeBatchResponse`'s JSON written from the items' fields, with the serialisers of
# `TokenResponse`'s own field types (the same bytes: tests/api/routes/test_tokens_answer.py)
# and no model built: validating 1,000 models that `TokenRecord`'s types already are,
# then dumping them, was ~4 ms of CPU per 1,000 items against ~1 (issue 21). A value of
# another type than the field's raises (`warnings="error"`): never sent as it is.
_TokenAnswer = TypedDict(  # type: ignore[misc] # the model's fields, not restated
    "_TokenAnswer", {name: f.annotation for name, f in TokenResponse.model_fields.items()}
)
_BATCH_ANSWER: Final = TypeAdapter(list[_TokenAnswer])
_ONE_ANSWER: Final = TypeAdapter(_TokenAnswer)


def _token_json(record: TokenRecord) -> Response:
    """`TokenResponse` of `record` as its JSON answer (as `_json`'s), unvalidated, as
    `_batch_json` writes each item: the model's validation and dump were ~2.5% of a
    worker's GIL samples under single tokenize load (issue 21, session 38)."""
    fields: Any = _token_fields(record)
    return Response(_ONE_ANSWER.dump_json(fields, warnings="error"), media_type="application/json")


def _batch_json(fields: list[dict[str, object]]) -> Response:
    """`TokenizeBatchResponse(results=fields)`'s JSON answer (as `_json`'s), unvalidated."""
    results: Any = fields
    body = b'{"results":' + _BATCH_ANSWER.dump_json(results, warnings="error") + b"}"
    return Response(body, media_type="application/json")


def _detokenized_fields(revealed: Revealed) -> dict[str, object]:
    """`revealed` as `DetokenizeResponse`'s fields: the PAN in full only when the vault
    revealed it (`Revealed.pan`), else its masked form."""
    if revealed.pan is not None:
        return {
            "token": revealed.token,
            "pan": revealed.pan.reveal(),
            "reveal": "full",
            "expiry": revealed.expiry,
            "cardholder_name": revealed.cardholder_name,
        }
    return {
        "token": revealed.token,
        "pan": revealed.masked,
        "reveal": "masked",
        "expiry": revealed.expiry,
    }


def _detokenized(revealed: Revealed) -> DetokenizeResponse:
    return DetokenizeResponse.model_validate(_detokenized_fields(revealed))


def _service_request(item: TokenizeRequest, pan: Pan) -> ServiceTokenizeRequest:
    """The vault's request for `item` (raises `InvalidSecurityCode` for a bad code)."""
    return ServiceTokenizeRequest(
        pan=pan,
        format=item.format,
        metadata=item.metadata,
        ttl_seconds=item.ttl_seconds,
        idempotency_key=item.idempotency_key,
        expiry=item.expiry,
        cardholder_name=item.cardholder_name,
        security_code=None if item.security_code is None else SecurityCode(item.security_code),
    )


@router.post("/v1/tokenize", response_model=TokenResponse, tags=["tokens"])
async def tokenize(body: TokenizeRequest, http: Request) -> Response:
    """Tokenize a PAN in a format the caller's policy allows."""
    caller, state = call_context(http), app_state(http)
    request = _service_request(body, Pan(body.pan))
    # Begun on the event loop when nothing in it waits; a networked HSM's calls do.
    begin = answered_on_loop if state.service.hsm_is_local else answered
    return _token_json(await begin(state.service.tokenize_pending, caller, request))


@router.post("/v1/tokenize/batch", response_model=TokenizeBatchResponse, tags=["tokens"])
async def tokenize_batch(body: TokenizeBatchRequest, caller: Caller, state: State) -> Response:
    """Tokenize up to 1,000 PANs, all or nothing; results in request order."""
    return await finished(_tokenize_batch, body, caller, state)


def _tokenize_batch(body: TokenizeBatchRequest, caller: Caller, state: State) -> Response:
    requests = []
    for index, item in enumerate(body.items):
        try:
            requests.append(_service_request(item, Pan(item.pan)))
        except CofreError as exc:
            raise BatchItemInvalid(index, exc.code, str(exc)) from None
    records = state.service.tokenize_batch(caller, requests)
    # Answered as its JSON here: a model per item, then FastAPI's second validation and
    # its encoding on the event loop, were ~13 ms of CPU per 1,000 items (issue 21).
    return _batch_json([_token_fields(r) for r in records])


@router.post("/v1/detokenize", response_model=DetokenizeResponse, tags=["tokens"])
async def detokenize(body: DetokenizeRequest, http: Request) -> Response:
    """The PAN behind a token: in full if the caller's policy reveals it, else masked."""
    caller, state = call_context(http), app_state(http)
    with naming_token(body.token):  # a refusal's entry names its record (session 40)
        revealed = await answered_on_loop(state.service.detokenize_pending, caller, body.token)
    return _json(_detokenized(revealed))


@router.post("/v1/detokenize/batch", response_model=DetokenizeBatchResponse, tags=["tokens"])
async def detokenize_batch(body: DetokenizeBatchRequest, caller: Caller, state: State) -> Response:
    """Detokenize up to 1,000 tokens, all or nothing; results in request order."""
    return await finished(_detokenize_batch, body, caller, state)


def _detokenize_batch(body: DetokenizeBatchRequest, caller: Caller, state: State) -> Response:
    revealed = state.service.detokenize_batch(caller, body.tokens)
    # As `_tokenize_batch` answers.
    answer = {"results": [_detokenized_fields(r) for r in revealed]}
    return _json(DetokenizeBatchResponse.model_validate(answer))


@router.post("/v1/detokenize-masked", response_model=MaskedResponse, tags=["tokens"])
async def detokenize_masked(body: DetokenizeRequest, http: Request) -> Response:
    """Only the masked PAN behind a token: at most the first six and the last four
    digits, and never fewer than six hidden."""
    caller, state = call_context(http), app_state(http)
    with naming_token(body.token):
        revealed = await answered_on_loop(
            state.service.detokenize_pending, caller, body.token, masked_only=True
        )
    return _json(
        MaskedResponse(token=revealed.token, masked_pan=revealed.masked, expiry=revealed.expiry)
    )


@router.post("/v1/lookup", response_model=LookupResponse, tags=["tokens"])
async def lookup(body: LookupRequest, http: Request) -> LookupResponse:
    """The oldest live tokens of a PAN (optionally of one format), at most 100; each costs
    a unit of the caller's rate limit."""
    caller, state = call_context(http), app_state(http)
    pan = Pan(body.pan)
    rules = state.service.policy.policy.identities.get(caller.identity)
    if rules is None or rules.rate_limit is None:  # refused, or not one at a time
        found = await finished(state.service.lookup_page, caller, pan, body.format)
    else:
        # The vault runs the lookups of an identity with a rate limit one at a time per
        # process; they wait for their turn here, holding no thread (atk48b, `Turns`),
        # and a turn is given back when its call ended, a cancelled one's too.
        turn = state.lookup_turns.of(caller.identity)
        await turn.acquire()
        found = await finished(
            state.service.lookup_page, caller, pan, body.format, after=turn.release
        )
    return LookupResponse(
        tokens=[_token_response(r) for r in found.tokens], truncated=found.truncated
    )


@router.get("/v1/tokens/{token}", response_model=TokenResponse, tags=["tokens"])
def token_metadata(token: TokenPath, caller: Caller, state: State) -> TokenResponse:
    """A token's format, dates and metadata (never the PAN)."""
    with naming_token(token):
        return _token_response(state.service.token_info(caller, token))


@router.patch("/v1/tokens/{token}", response_model=TokenResponse, tags=["tokens"])
def update_token(
    token: TokenPath, body: TokenUpdateRequest, caller: Caller, state: State
) -> TokenResponse:
    """Change a token's metadata, life or card details (a reissued card's new expiry):
    never its PAN. Answers the token as `GET /v1/tokens/{token}` does."""
    change = TokenUpdate(
        metadata=body.metadata,
        ttl_seconds=body.ttl_seconds,
        sets_ttl="ttl_seconds" in body.model_fields_set,
        expiry=body.expiry,
        cardholder_name=body.cardholder_name,
    )
    with naming_token(token):
        return _token_response(state.service.update(caller, token, change))


@router.delete("/v1/tokens/{token}", response_model=DeleteResponse, tags=["tokens"])
def delete_token(token: TokenPath, caller: Caller, state: State) -> DeleteResponse:
    """Crypto-shred a token: the ciphertext is erased, a tombstone and the audit remain."""
    with naming_token(token):
        return DeleteResponse(token=token, deleted=state.service.delete(caller, token))
