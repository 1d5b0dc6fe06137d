"""The hot single-item routes (tokenize, detokenize, detokenize-masked) served past
FastAPI's routing, for the requests it would have served the same way.

IN PCI SCOPE. It sits inside the request guard (`api.guard`: identity, revocation,
body limits, content type, audit, log line and metrics all still run for every
request) and in front of FastAPI's exception middleware and router. Under load the
layers between the guard and the route (Starlette's router and exception middleware,
FastAPI's request handler, its exit stacks and dependency solving) were ~20% of a
worker's GIL samples for a route that needs none of them (issue 21).

For a ``POST`` of ``application/json`` to one of `HOT_PATHS` it reads the body
(through the guard's limited `receive`), parses it as FastAPI does (`json.loads`, then
the route's body model's validation of the result) and, only when both succeed, calls
the route's own endpoint function and sends the response it returns; an exception the
endpoint raises is answered by the app's own handler for it, as the exception
middleware would. Anything else (another path, method or media type, a body that is
not JSON or not valid, a body over the limit: the cases whose answers FastAPI words, a
422 among them) is passed to FastAPI with what it read replayed, so those answers are
FastAPI's own.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final, cast

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Endpoint = Callable[[Any, Request], Awaitable[Response]]

HOT_PATHS: Final = frozenset({"/v1/tokenize", "/v1/detokenize", "/v1/detokenize-masked"})


class HotRoutes:
    """Pure ASGI middleware (see the module text); `fastapi` is the app whose exception
    handlers answer for it, `routes` the routes of the router, included in `fastapi`
    with no prefix and no dependencies of its own, that holds `HOT_PATHS`."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.fastapi = fastapi
        self.routes = routes
        self._routes: dict[str, tuple[APIRoute, type[BaseModel], Endpoint]] | None = None

    def _hot(self) -> dict[str, tuple[APIRoute, type[BaseModel], Endpoint]]:
        # Read from the app's routes at the first request: each hot route is one
        # ``POST`` taking its body model and the `Request`, and answering a `Response`.
        routes = self._routes
        if routes is None:
            routes = {}
            for route in self.routes:
                if isinstance(route, APIRoute) and route.path in HOT_PATHS:
                    model = route.body_field.field_info.annotation if route.body_field else None
                    if route.methods != {"POST"} or not (
                        isinstance(model, type) and issubclass(model, BaseModel)
                    ):
                        raise TypeError(f"{route.path} is not a POST of a body model")
                    routes[route.path] = (route, model, cast(Endpoint, route.endpoint))
            if set(routes) != HOT_PATHS:
                raise TypeError(f"hot routes missing: {sorted(HOT_PATHS - set(routes))}")
            self._routes = routes
        return routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = None
        if scope["type"] == "http" and scope["method"] == "POST" and _json_body(scope):
            hot = self._hot().get(scope["path"])
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, model, endpoint = hot
        chunks, ending = await _read_body(receive)
        item = None
        if ending is None:
            try:
                item = model.model_validate(json.loads(b"".join(chunks)))
            except Exception:  # noqa: BLE001 - FastAPI answers it, from the replayed body
                item = None
        if item is None:
            await self.app(scope, _replay(chunks, ending, receive), send)
            return
        scope["route"] = route
        scope["endpoint"] = endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await endpoint(item, request)
        except Exception as exc:  # noqa: BLE001 - the handler's answer, or raised again
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception) -> Response:
        """The app's handler's answer to `exc`, looked up as Starlette's exception
        middleware does (the nearest class in its MRO with a handler; the handler for
        `Exception` is the server error middleware's, past the guard); re-raised if
        there is none."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            handler = self.fastapi.exception_handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc


def _json_body(scope: Scope) -> bool:
    """Whether the request says its body is ``application/json``, which FastAPI parses
    as JSON (its other JSON media types are left to it)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> tuple[list[bytes], Message | Exception | None]:
    """The request's body chunks, and None; or the chunks read and what ended the
    reading early (a message that is not a body chunk, such as a disconnect, or what
    `receive` raised, such as the guard's body limit), for FastAPI to meet in turn."""
    chunks: list[bytes] = []
    while True:
        try:
            message = await receive()
        except Exception as exc:  # noqa: BLE001 - raised again to FastAPI by `_replay`
            return chunks, exc
        if message["type"] != "http.request":
            return chunks, message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks, None


def _replay(chunks: list[bytes], ending: Message | Exception | None, receive: Receive) -> Receive:
    """A `receive` that gives `chunks` back as they came, then `ending` (raised if an
    exception), then `receive`'s own messages, for the app that did not read them."""
    pending: list[Message | Exception] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if ending is None:
        pending.append({"type": "http.request", "body": b"", "more_body": False})
    else:
        pending.append(ending)

    async def replayed() -> Message:
        if pending:
            item = pending.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return await receive()

    return replayed
