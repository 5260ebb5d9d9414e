"""Refusals before a body is read: pure ASGI (no per-request cost of BaseHTTPMiddleware)."""

from __future__ import annotations

from serve_app.api.errors import error_response, fault_response
from serve_app.config import MAX_BODY_BYTES

GENERATE_PATHS = ("/predict", "/invocations")


class BodyLimit:
    """A declared body over the limit gets 413 before it is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                response = error_response(
                    413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Shed:
    """Generation requests get 503 before they are read when the engine would refuse any (queue
    full, queued work beyond the timeout, draining, failed): under a flood a 503 then costs no
    parsing or validation."""

    def __init__(self, app, engine_of):
        self.app, self.engine_of = app, engine_of

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(GENERATE_PATHS)
        ):
            engine = self.engine_of()
            refusal = engine.refusal()
            if refusal is not None:
                await fault_response(refusal, engine.metrics)(scope, receive, send)
                return
        await self.app(scope, receive, send)
