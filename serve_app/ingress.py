"""HTTP routes: thin, validated at the edge, no torch. /predict, /invocations, /ping.

The routes talk to an engine (``serve_app.engine.Engine``, or any object with its ``generate``,
``status`` and ``model_name``) kept on ``app.state.engine``: the Ray deployment puts its own
there, a plain uvicorn process or a test puts another.
"""

from __future__ import annotations

import base64
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from serve_app import playground
from serve_app.config import MAX_BODY_BYTES
from serve_app.engine import (
    EngineError,
    GenerateResult,
    GenerationFailed,
    InvalidRequest,
    ModelUnavailable,
    Overloaded,
    ShuttingDown,
    TimedOut,
)
from serve_app.schemas import (
    MEDIA_TYPES,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    PingResponse,
)

logger = logging.getLogger("sdturbo")
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
RETRY_AFTER = {"Retry-After": "1"}
# Engine errors by kind: status, error type, and whether a retry may succeed (Retry-After).
ENGINE_ERRORS: dict[type, tuple[int, str, bool]] = {
    InvalidRequest: (422, "validation_error", False),
    Overloaded: (503, "overloaded", True),
    ShuttingDown: (503, "shutting_down", True),
    ModelUnavailable: (503, "model_unavailable", True),
    TimedOut: (504, "timeout", False),
}


class ApiError(Exception):
    """An error with its HTTP status, rendered as an ErrorResponse."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


def error_response(status: int, type_: str, message: str, headers: dict | None = None):
    body = {"error": {"type": type_, "message": message}}  # the ErrorResponse shape
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(error: EngineError) -> tuple[int, str, dict | None]:
    """The HTTP status, error type and headers for an engine error."""
    if isinstance(error, GenerationFailed):
        if error.kind == "out_of_memory":
            return 503, error.kind, RETRY_AFTER
        return 500, error.kind, None
    status, type_, retry = ENGINE_ERRORS.get(type(error), (500, "internal_error", False))
    return status, type_, RETRY_AFTER if retry else None


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def parse_body(body: bytes, content_type: str | None) -> GenerateRequest:
    """A request from a JSON body, or from a text/plain body that is the prompt."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "text/plain" and media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported content type {media!r}; send application/json or text/plain",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"body is not UTF-8: {exc.reason}") from None
    try:
        if media == "text/plain":
            return GenerateRequest.model_validate({"prompt": text})
        return GenerateRequest.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            reason = errors[0].get("ctx", {}).get("error", "malformed")
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {reason}") from None
        if errors and errors[0]["type"] == "model_type":
            raise ApiError(422, "validation_error", "body must be a JSON object") from None
        raise ApiError(422, "validation_error", _describe(errors)) from None


def negotiate(accept: str | None, output_format: str) -> str | None:
    """Pick the response media type from Accept: JSON or raw image bytes; None if none fits."""
    ranges = []
    for i, item in enumerate((accept or "*/*").split(",")):
        media, *params = (part.strip().lower() for part in item.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            ranges.append((-float(q), i, media))
        except ValueError:
            ranges.append((-1.0, i, media))
    for neg_q, _, media in sorted(ranges):
        if neg_q == 0:
            continue
        if media in ("*/*", "application/*", "application/json", ""):
            return "application/json"
        if media == "image/*":
            return MEDIA_TYPES[output_format]
        if media in MEDIA_TYPES.values():
            return media
    return None


def json_body(request: GenerateRequest, result: GenerateResult, model: str) -> dict:
    encoded = [base64.b64encode(image).decode("ascii") for image in result.images]
    body = {
        "image": encoded[0],
        "seed": result.seeds[0],
        "seeds": result.seeds,
        "model": model,
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.num_inference_steps,
        "output_format": request.output_format,
        "warnings": result.warnings,
        "timings": result.timings.model_dump(),
    }
    if len(encoded) > 1:
        body["images"] = encoded
    return body


async def generate(request: Request, generate_request: GenerateRequest) -> GenerateResult:
    return await request.app.state.engine.generate(generate_request)


class BodyLimit:
    """Refuse a declared body over the limit before reading it (pure ASGI: no per-request
    overhead of Starlette's BaseHTTPMiddleware)."""

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
    """Refuse generation requests before reading them when the engine would refuse any
    (queue full, draining, failed): under a flood a 503 then costs no parsing or validation."""

    def __init__(self, app, engine_of):
        self.app, self.engine_of = app, engine_of

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(GENERATE_PATHS)
        ):
            refusal = self.engine_of().refusal()
            if refusal is not None:
                status, type_, headers = status_of(refusal)
                await error_response(status, type_, str(refusal), headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


GENERATE_PATHS = ("/predict", "/invocations")
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


def _register_routes(api: FastAPI) -> None:
    @api.post(
        "/predict",
        response_model=GenerateResponse,
        responses=ERRORS,
        summary="Generate images (JSON in, JSON with base64 images out)",
        openapi_extra={"requestBody": REQUEST_BODY},
    )
    async def predict(request: Request) -> Response:
        body = parse_body(await request.body(), request.headers.get("content-type"))
        result = await generate(request, body)
        return JSONResponse(json_body(body, result, request.app.state.engine.model_name))

    @api.post(
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
                "content": {
                    **REQUEST_BODY["content"],
                    "text/plain": {"schema": PROMPT_SCHEMA},
                },
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
        result = await generate(request, body)
        headers = {}
        if CUSTOM_ATTRIBUTES in request.headers:
            headers[CUSTOM_ATTRIBUTES] = request.headers[CUSTOM_ATTRIBUTES]
        if media == "application/json":
            model = request.app.state.engine.model_name
            return JSONResponse(json_body(body, result, model), headers=headers)
        return Response(result.images[0], media_type=media, headers=headers)

    @api.get(
        "/ping",
        response_model=PingResponse,
        responses={503: {"model": PingResponse, "description": "Loading, draining or failed"}},
        summary="200 once the model is loaded and warm; 503 while loading, draining or failed",
    )
    async def ping(request: Request) -> JSONResponse:
        # Read from the engine's state, kept current by its own threads: no call, no wait.
        engine = request.app.state.engine
        status = engine.status
        body = {"status": status, "model": engine.model_name, "replicas": engine.replicas}
        return JSONResponse(body, status_code=200 if status == "healthy" else 503)


def _register_errors(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @api.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError):
        status, type_, headers = status_of(exc)
        return error_response(status, type_, str(exc), headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return error_response(422, "validation_error", _describe(exc.errors()))

    @api.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        # FastAPI's own errors (unknown route, wrong method) in our error format.
        kind = {404: "not_found", 405: "method_not_allowed"}
        type_ = kind.get(exc.status_code, "http_error")
        return error_response(exc.status_code, type_, str(exc.detail), exc.headers)

    @api.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception):
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed to handle this request")


def create_api() -> FastAPI:
    """The FastAPI application, without an engine: set ``app.state.engine`` before serving."""
    api = FastAPI(
        title="SD-Turbo server",
        description="Text-to-image with stabilityai/sd-turbo: dynamic batching, SageMaker "
        "contract (/ping, /invocations).",
        version="0.2.0",
    )
    api.include_router(playground.router)
    _register_routes(api)
    _register_errors(api)
    api.add_middleware(BodyLimit)
    api.add_middleware(Shed, engine_of=lambda: api.state.engine)  # outermost: runs first

    def openapi() -> dict:
        # The routes parse their bodies themselves (JSON or text/plain, strictly), so FastAPI
        # does not see the request model: publish its schema as the routes declare it.
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            request_schema = GenerateRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schema["components"]["schemas"]["GenerateRequest"] = request_schema
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi
    return api
