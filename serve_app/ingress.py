"""HTTP routes: thin, validated at the edge, no torch. /predict, /invocations, /ping."""

import asyncio
import base64
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from serve_app import playground
from serve_app.config import MAX_BODY_BYTES
from serve_app.schemas import (
    MEDIA_TYPES,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationFailed,
    InvalidRequest,
    PingResponse,
)

logger = logging.getLogger("ray.serve")
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
RETRY_AFTER_S = "1"


class ApiError(Exception):
    """An error with its HTTP status, rendered as an ErrorResponse."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers


def error_response(status: int, type_: str, message: str, headers: dict | None = None):
    body = ErrorResponse.model_validate({"error": {"type": type_, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


api = FastAPI(
    title="SD-Turbo server",
    description="Text-to-image with stabilityai/sd-turbo: dynamic batching, SageMaker contract.",
    version="0.1.0",
)
api.include_router(playground.router)
ERRORS = {code: {"model": ErrorResponse} for code in (400, 406, 413, 415, 422, 500, 503, 504)}


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError):
    return error_response(exc.status, exc.type, exc.message, exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError):
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = err.get("ctx", {}).get("error", "malformed")
            return error_response(400, "invalid_json", f"request body is not valid JSON: {reason}")
    return error_response(422, "validation_error", _describe(errors))


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException):
    # FastAPI's own errors (unknown route, wrong method, an unparsable body) in our error format.
    kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    type_ = kind.get(exc.status_code, "http_error")
    return error_response(exc.status_code, type_, str(exc.detail), exc.headers)


@api.exception_handler(Exception)
async def _internal_error(_: Request, exc: Exception):
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "the server failed to handle this request")


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return error_response(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    return await call_next(request)


def parse_body(body: bytes, content_type: str | None) -> GenerateRequest:
    """Build a request from a JSON body, or from a text/plain body that is the prompt."""
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    media = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        if media == "text/plain":
            return GenerateRequest(prompt=body.decode("utf-8"))
        if media != "application/json" and not media.endswith("+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"unsupported content type {media!r}; send application/json or text/plain",
            )
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"body is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise ApiError(422, "validation_error", _describe(exc.errors())) from None
    if not isinstance(payload, dict):
        raise ApiError(422, "validation_error", "request body must be a JSON object")
    try:
        return GenerateRequest.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", _describe(exc.errors())) from None


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


@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    def __init__(self, model: DeploymentHandle, model_name: str, request_timeout_s: float):
        self.model = model
        self.model_name = model_name
        self.request_timeout_s = request_timeout_s
        self.in_flight = 0
        self.draining = False

    async def drain(self, timeout_s: float) -> int:
        """Refuse new work, wait for accepted requests to finish; return how many remain."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    async def _generate(self, request: GenerateRequest) -> dict:
        if self.draining:
            raise ApiError(
                503,
                "shutting_down",
                "the server is shutting down; retry elsewhere",
                {"Retry-After": RETRY_AFTER_S},
            )
        self.in_flight += 1
        try:
            return await self._call_model(request)
        finally:
            self.in_flight -= 1

    async def _call_model(self, request: GenerateRequest) -> dict:
        start = time.perf_counter()
        response = self.model.generate.remote(request)
        try:
            result = await asyncio.wait_for(response, timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()  # dropped from its batch if it has not started
            raise ApiError(
                504, "timeout", f"not done within {self.request_timeout_s:g} s"
            ) from None
        except InvalidRequest as exc:
            raise ApiError(422, "validation_error", str(getattr(exc, "cause", exc))) from None
        except BackPressureError:
            raise ApiError(
                503,
                "overloaded",
                "the server is at capacity; retry shortly",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError):
            logger.warning("model replica unavailable", exc_info=True)
            raise ApiError(
                503,
                "model_unavailable",
                "the model replica restarted; retry shortly",
                {"Retry-After": RETRY_AFTER_S},
            ) from None
        except GenerationFailed as exc:
            failure = getattr(exc, "cause", exc)
            status = 503 if failure.kind == "out_of_memory" else 500
            headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
            raise ApiError(status, failure.kind, failure.message, headers) from None
        result["timings"]["total_ms"] = (time.perf_counter() - start) * 1000
        return result

    def _json_body(self, request: GenerateRequest, result: dict) -> dict:
        encoded = [base64.b64encode(image).decode("ascii") for image in result["images"]]
        return GenerateResponse(
            image=encoded[0],
            images=encoded if len(encoded) > 1 else None,
            seed=result["seeds"][0],
            seeds=result["seeds"],
            model=result["model"],
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            output_format=request.output_format,
            warnings=result["warnings"],
            timings=result["timings"],
        ).model_dump(exclude_none=True)

    @api.post(
        "/predict",
        response_model=GenerateResponse,
        responses=ERRORS,
        response_model_exclude_none=True,
        summary="Generate images (JSON in, JSON with base64 images out)",
    )
    async def predict(self, request: GenerateRequest) -> dict:
        return self._json_body(request, await self._generate(request))

    @api.post(
        "/invocations",
        response_model=GenerateResponse,
        responses={**ERRORS, 200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
        summary="SageMaker inference: JSON or text/plain in; JSON, or raw image bytes by Accept",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/GenerateRequest"}
                    },
                    "text/plain": {"schema": {"type": "string", "minLength": 1}},
                },
            }
        },
    )
    async def invocations(self, request: Request) -> Response:
        generate_request = parse_body(await request.body(), request.headers.get("content-type"))
        media = negotiate(request.headers.get("accept"), generate_request.output_format)
        if media is None:
            raise ApiError(
                406,
                "not_acceptable",
                f"Accept must allow application/json or one of {', '.join(MEDIA_TYPES.values())}",
            )
        if media != "application/json":
            fmt = next(f for f, m in MEDIA_TYPES.items() if m == media)
            generate_request = generate_request.model_copy(update={"output_format": fmt})
        result = await self._generate(generate_request)
        headers = {}
        if CUSTOM_ATTRIBUTES in request.headers:
            headers[CUSTOM_ATTRIBUTES] = request.headers[CUSTOM_ATTRIBUTES]
        if media == "application/json":
            return JSONResponse(self._json_body(generate_request, result), headers=headers)
        return Response(result["images"][0], media_type=media, headers=headers)

    @api.get(
        "/ping",
        response_model=PingResponse,
        responses={503: {"model": PingResponse}},
        summary="200 once a model replica is loaded and warm, 503 before",
    )
    async def ping(self) -> JSONResponse:
        replicas = await asyncio.to_thread(self._running_model_replicas)
        if self.draining:
            body = PingResponse(status="draining", model=self.model_name, replicas=replicas)
            return JSONResponse(body.model_dump(), status_code=503)
        body = PingResponse(
            status="healthy" if replicas else "unavailable",
            model=self.model_name,
            replicas=replicas,
        )
        return JSONResponse(body.model_dump(), status_code=200 if replicas else 503)

    def _running_model_replicas(self) -> int:
        # The controller runs each replica's health check and knows which finished warm-up; asking
        # it never queues behind generation requests, so /ping stays fast under load.
        app_name = serve.get_replica_context().app_name
        try:
            app = serve.status().applications[app_name]
            deployment = app.deployments[self.model.deployment_name]
        except Exception:
            return 0
        return sum(n for state, n in deployment.replica_states.items() if state == "RUNNING")
