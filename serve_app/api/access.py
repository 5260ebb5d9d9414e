"""One access-log line per request, its request id, and the request counter: pure ASGI.

The request id is the caller's ``X-Request-Id`` or a new one, and goes back in every
response's headers, errors included. Under Ray Serve, Serve's own ``RequestIdMiddleware``
(``ray/serve/_private/http_util.py``) does both around the whole app, so this one only reads the
id Serve put in the request's headers (``add_header=False``); under plain uvicorn or a test
client it adds the header itself, and the unhandled-error handler, which Starlette runs outside
every middleware, adds it from the scope. The line goes to the ``sdturbo.access`` logger at INFO, as
``key=value`` pairs, formatted only when that logger is enabled for INFO.
"""

from __future__ import annotations

import logging
import time
import uuid

from serve_app.api.errors import REQUEST_ID_HEADER, REQUEST_ID_KEY

access_logger = logging.getLogger("sdturbo.access")
HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
MAX_ID_LENGTH = 128  # a caller's id longer than this is replaced, not echoed
# Route labels: the known routes by their last path segment (an app may live under a prefix,
# /<name>/predict); anything else is "other", so a scanner cannot grow the label set.
ROUTES = ("/predict", "/invocations", "/ping", "/docs", "/openapi.json")


def route_of(path: str) -> str:
    for route in ROUTES:
        if path.endswith(route):
            return route
    return "/" if path.endswith("/") or path == "" else "other"


def request_id_of(headers) -> str:
    for key, value in headers:
        if key == HEADER and 0 < len(value) <= MAX_ID_LENGTH:
            text = value.decode("latin-1")
            if text.isprintable():
                return text
    return uuid.uuid4().hex


class AccessLog:
    """Outermost middleware: the request id in and out, the access line, ``request()``."""

    def __init__(self, app, engine_of, add_header: bool = True):
        self.app, self.engine_of, self.add_header = app, engine_of, add_header

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        if self.add_header:
            scope[REQUEST_ID_KEY] = request_id
        state = scope.setdefault("state", {})  # the route's request.state: it notes queue_ms
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.add_header:
                    headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                    message["headers"] = [*headers, (HEADER, request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            total_ms = (time.perf_counter() - start) * 1000
            route = route_of(scope["path"])
            self.engine_of().metrics.request(route, status, total_ms)
            if access_logger.isEnabledFor(logging.INFO):
                queue_ms = state.get("queue_ms")
                access_logger.info(
                    "request_id=%s method=%s route=%s status=%d queue_ms=%s total_ms=%.1f",
                    request_id,
                    scope["method"],
                    route,
                    status,
                    "-" if queue_ms is None else f"{queue_ms:.1f}",
                    total_ms,
                )
