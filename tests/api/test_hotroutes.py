"""`api.hotroutes`: the hot routes answer what FastAPI's routing answers.

A body sent as ``application/json`` takes the hot path; the same body sent as another
JSON media type (``application/vnd.cofre+json``, which the guard admits and FastAPI
parses as JSON) goes through FastAPI's routing. Both must answer alike: success,
a refusal the vault raises, a body FastAPI refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from concurrent.futures import Future
from typing import Any, cast

import pytest

from api.app import create_app
from api.dependencies import AppState
from api.hotroutes import HotRoutes
from api.observability import make_telemetry
from api.routes import tokens
from tests.api.conftest import VaultServer
from vault.models import Pending
from vault.service import Revealed, VaultService

HOT = {"content-type": "application/json"}
ROUTED = {"content-type": "application/vnd.cofre+json"}


def _strip(body: dict[str, object]) -> dict[str, object]:
    # What differs between two answers to the same question: ids, times, and
    # whether the card was tokenized already (the second time, it was).
    return {
        k: v
        for k, v in body.items()
        if k not in {"request_id", "instance", "created_at", "existing"}
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tokenize", {"pan": "4000000000000010", "format": "pan_bin6_last4"}),
        ("/v1/tokenize", {"pan": "4000000000000010", "format": "no_such_format"}),
        ("/v1/tokenize", {"pan": "4000000000000010"}),
        ("/v1/tokenize", {"pan": "4000000000000011", "format": "pan_bin6_last4"}),
        ("/v1/tokenize", []),
        ("/v1/detokenize", {"token": "0" * 16}),
        ("/v1/detokenize", {"token": 5}),
        ("/v1/detokenize-masked", {"token": "0" * 16}),
        ("/v1/detokenize-masked", {}),
    ],
)
def test_hot_and_routed_answers_agree(vault_server: VaultServer, path: str, body: object) -> None:
    data = json.dumps(body).encode()
    with vault_server.client("payments") as c:
        hot = c.post(path, content=data, headers=HOT)
        routed = c.post(path, content=data, headers=ROUTED)
    assert hot.status_code == routed.status_code, (hot.text, routed.text)
    assert hot.headers["content-type"] == routed.headers["content-type"]
    assert _strip(hot.json()) == _strip(routed.json())


def test_a_token_round_trip_on_the_hot_path(vault_server: VaultServer) -> None:
    with vault_server.client("payments") as c:
        made = c.post("/v1/tokenize", json={"pan": "4000000000000028", "format": "uuid"})
        assert made.status_code == 200, made.text
        token = made.json()["token"]
        assert c.post("/v1/tokenize", json={"pan": "4000000000000028", "format": "uuid"}).json()[
            "existing"
        ]
        masked = c.post("/v1/detokenize-masked", json={"token": token})
    assert masked.status_code == 200, masked.text
    assert masked.json()["masked_pan"] == "400000******0028"
    with vault_server.client("settlement") as c:
        revealed = c.post("/v1/detokenize", json={"token": token})
    assert revealed.status_code == 200, revealed.text
    assert revealed.json()["reveal"] == "full"


class _Vault:
    """Only what detokenize-masked calls: its answer, already committed."""

    def detokenize_pending(
        self, caller: object, token: str, *, masked_only: bool = False
    ) -> Pending[Revealed]:
        assert masked_only
        answer = Revealed(token=token, masked="400000******0028", pan=None, expiry=None)
        committed: Future[Revealed] = Future()
        committed.set_result(answer)
        return Pending(committed, lambda raw: raw, lambda: answer)


def test_a_valid_request_is_served_without_fastapi() -> None:
    app = create_app(
        AppState(service=cast(VaultService, _Vault()), check_ready=dict, telemetry=make_telemetry())
    )

    async def fastapi_app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("passed to FastAPI")

    hot = HotRoutes(fastapi_app, fastapi=app, routes=tokens.router.routes)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b'{"token": "tok_1"}', "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/detokenize-masked",
        "headers": [(b"content-type", b"application/json")],
        "app": app,
        "state": {"identity": "spiffe://cofre/payments", "request_id": "r1"},
    }
    asyncio.run(hot(scope, receive, send))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["masked_pan"] == "400000******0028"
    assert scope["route"].path == "/v1/detokenize-masked"
