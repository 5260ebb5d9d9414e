"""The HTTP edge: routes, body parsing, errors and pre-read refusals. No torch.

- ``routes``: /predict, /invocations, /ping
- ``parsing``: request bodies, content negotiation, the JSON response body
- ``errors``: engine faults to HTTP statuses (one handler per type), the error body
- ``middleware``: 413 and 503 before a body is read
- ``access``: the request id, one access-log line and the request counter per request
- ``playground``: GET /, a page for local runs
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serve_app.api import errors, playground, routes
from serve_app.api.access import AccessLog
from serve_app.api.middleware import BodyLimit, Shed
from serve_app.schemas import GenerateRequest


def create_api(request_id_header: bool = True) -> FastAPI:
    """The FastAPI application, without an engine: set ``app.state.engine`` before serving.
    ``request_id_header=False`` under Ray Serve, which adds X-Request-Id itself."""
    api = FastAPI(
        title="SD-Turbo server",
        description="Text-to-image with stabilityai/sd-turbo: dynamic batching, SageMaker "
        "contract (/ping, /invocations).",
        version="0.3.0",
    )
    api.include_router(playground.router)
    api.include_router(routes.router)
    errors.register(api)
    api.add_middleware(BodyLimit)
    api.add_middleware(Shed, engine_of=lambda: api.state.engine)
    api.add_middleware(  # outermost: runs first
        AccessLog, engine_of=lambda: api.state.engine, add_header=request_id_header
    )

    def openapi() -> dict:
        # The routes parse their bodies themselves, so FastAPI does not see the request model:
        # publish its schema where the routes' requestBody refers to it.
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            schema["components"]["schemas"]["GenerateRequest"] = GenerateRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi
    return api
