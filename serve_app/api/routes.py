"""The routes: /predict, /invocations, /ping. Thin: parse, hand to the engine, render.

The engine (``serve_app.engine.Engine``, or any object with its ``generate``, ``refusal``,
``health`` and ``model_name``) is ``app.state.engine``: the Ray deployment puts its own there,
a plain uvicorn process or a test puts another.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from serve_app.api.errors import ApiError
from serve_app.api.images import decode_input_image
from serve_app.api.parsing import json_body, negotiate, parse_body
from serve_app.schemas import (
    MEDIA_TYPES,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    PingResponse,
)

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
router = APIRouter()

# The routes read their bodies themselves (JSON or text/plain, strictly): the request schema
# is declared here for the published OpenAPI document.
REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}},
}
PROMPT_SCHEMA = {
    key: value
    for key, value in GenerateRequest.model_json_schema()["properties"]["prompt"].items()
    if key in ("type", "minLength", "maxLength", "pattern", "description")
}
BINARY = {"type": "string", "format": "binary"}
ERROR = {"model": ErrorResponse}
RETRYABLE = {
    **ERROR,
    "description": "Overloaded, shutting down, out of memory or model unavailable: retry",
    "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
}
ERRORS = {code: ERROR for code in (400, 413, 415, 422, 500, 504)} | {503: RETRYABLE}


async def generate(request: Request, body: GenerateRequest):
    engine = request.app.state.engine
    if body.image is None:
        result = await engine.generate(body)
    else:
        # Refused before it queues if the engine would refuse it anyway: no decoding for nothing.
        refusal = engine.refusal(body)
        if refusal is not None:
            raise refusal
        image = await run_in_threadpool(decode_input_image, body)
        result = await engine.generate(body, image)
    request.state.queue_ms = result.timings.queue_ms  # for the access log line
    return result


@router.post(
    "/predict",
    response_model=GenerateResponse,
    responses=ERRORS,
    summary="Generate images (JSON in, JSON with base64 images out)",
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def predict(request: Request) -> Response:
    body = parse_body(await request.body(), request.headers.get("content-type"))
    engine = request.app.state.engine
    result = await generate(request, body)
    return JSONResponse(json_body(body, result, engine.model_name))


@router.post(
    "/invocations",
    response_model=GenerateResponse,
    responses={
        **ERRORS,
        406: ERROR,
        200: {"content": {m: {"schema": BINARY} for m in MEDIA_TYPES.values()}},
    },
    summary="SageMaker inference: JSON or text/plain in; JSON, or raw image bytes by Accept",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {**REQUEST_BODY["content"], "text/plain": {"schema": PROMPT_SCHEMA}},
        }
    },
)
async def invocations(request: Request) -> Response:
    body = parse_body(await request.body(), request.headers.get("content-type"))
    media = negotiate(request.headers.get("accept"), body.output_format)
    if media is None:
        raise ApiError(
            406,
            "not_acceptable",
            f"Accept must allow application/json or one of {', '.join(MEDIA_TYPES.values())}",
        )
    if media != "application/json":
        fmt = next(f for f, m in MEDIA_TYPES.items() if m == media)
        body = body.model_copy(update={"output_format": fmt})
    engine = request.app.state.engine
    result = await generate(request, body)
    headers = {}
    if CUSTOM_ATTRIBUTES in request.headers:
        headers[CUSTOM_ATTRIBUTES] = request.headers[CUSTOM_ATTRIBUTES]
    if media == "application/json":
        return JSONResponse(json_body(body, result, engine.model_name), headers=headers)
    return Response(result.images[0], media_type=media, headers=headers)


@router.get(
    "/ping",
    response_model=PingResponse,
    responses={503: {"model": PingResponse, "description": "Loading, draining or failed"}},
    summary="200 once the model is loaded and warm; 503 while loading, draining or failed",
)
async def ping(request: Request) -> JSONResponse:
    # Read from the engine's state, kept current by its own threads: no call, no wait.
    engine = request.app.state.engine
    body = engine.ping()
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)
