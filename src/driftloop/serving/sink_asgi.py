"""The payload sink's POST routes as bare ASGI: body in, pre-encoded JSON answer out.

Every logged inference passes here twice. Measured on these VMs with the sink's handling
replaced by a no-op: a POST costs 80-83 us of CPU on this path against 88-107 us through
Starlette's ``Request`` and ``JSONResponse`` (uvicorn itself, answering a bare app: 50 us).
So the POST routes read ``receive`` and call ``send`` themselves, answering the bytes
``JSONResponse`` would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse

from driftloop.serving.sink_bodies import SinkError

log = logging.getLogger("driftloop.serving.sink")

#: An ASGI app's ``(scope, receive, send)`` callables.
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class Disconnected(Exception):
    """The client went away before its body was complete: nothing to store or answer."""


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """Read an ASGI request body, refusing (413) more than ``limit`` bytes without buffering.

    Args:
        receive: The ASGI ``receive`` callable of the request.
        headers: The request's headers, names in lower case.
        limit: Most body bytes accepted.

    Raises:
        SinkError: 400 for a Content-Length that is not an integer; 413 over ``limit``.
        Disconnected: The client closed the connection before the body's end.
    """
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise SinkError(400, "header Content-Length: not an integer") from None
        if size > limit:
            raise SinkError(413, f"body: {size} bytes, the limit is {limit}")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise SinkError(413, f"body: more than {limit} bytes, the limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, doc: Any) -> None:
    """Answer ``doc`` as JSON, encoded as Starlette's ``JSONResponse`` encodes it."""
    body = json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def lower_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers as a dict, names in lower case (as Starlette decodes them)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class SinkApp:
    """The sink's Starlette app, with its POST routes served as bare ASGI before it.

    Every event passes here, so the POST handlers skip Starlette's router, middleware,
    ``Request`` and ``JSONResponse`` (the figures are in the module docstring): they read
    the body from ``receive`` and send pre-encoded messages themselves. Anything else
    (GET, other paths and methods, the lifespan) goes to :attr:`app` unchanged.

    Attributes:
        app: The Starlette app (all routes, the lifespan, 404/405 answers).
    """

    def __init__(self, app: Starlette, posts: dict[str, Handler]) -> None:
        self.app = app
        self._posts = posts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._posts.get(scope["path"])
            if route is not None:
                try:
                    await route(scope, receive, send)
                except Exception:  # as Starlette's ServerErrorMiddleware: a 500, logged
                    log.exception("sink: unexpected error on POST %s", scope["path"])
                    await PlainTextResponse("Internal Server Error", status_code=500)(
                        scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["Disconnected", "Handler", "Receive", "Send", "SinkApp", "lower_headers",
           "read_body", "send_json"]
