"""Errors at the HTTP edge: every one a JSON ``ErrorResponse``, never a traceback, never a 200.

Each engine fault type is mapped here, once, to its status and error type; one handler per
type is registered from that mapping. 4xx are the caller's mistakes, 5xx ours; a 503 carries
``Retry-After`` (SageMaker's async endpoint retries only non-2xx).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve_app.engine import errors
from serve_app.engine.metrics import SHED_REASONS, Recorder

logger = logging.getLogger("sdturbo")
RETRY_AFTER = {"Retry-After": "1"}
REQUEST_ID_HEADER = "X-Request-Id"
# Where the access log leaves, in the ASGI scope, the id this app must add to its answer.
REQUEST_ID_KEY = "sdturbo.request_id"


@dataclass(frozen=True)
class Fault:
    status: int
    type: str
    retry: bool = False  # Retry-After: a retry may succeed


FAULTS: dict[type[errors.EngineError], Fault] = {
    errors.InvalidRequest: Fault(422, "validation_error"),
    errors.Overloaded: Fault(503, "overloaded", retry=True),
    errors.ShuttingDown: Fault(503, "shutting_down", retry=True),
    errors.ModelUnavailable: Fault(503, "model_unavailable", retry=True),
    errors.OutOfMemory: Fault(503, "out_of_memory", retry=True),
    errors.TimedOut: Fault(504, "timeout"),
    errors.GenerationFailed: Fault(500, "internal_error"),
}


class ApiError(Exception):
    """A request the edge refuses before the engine sees it, with its HTTP status."""

    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def error_response(status: int, type_: str, message: str, headers: dict | None = None):
    body = {"error": {"type": type_, "message": message}}  # the ErrorResponse shape
    return JSONResponse(body, status_code=status, headers=headers)


def fault_response(exc: errors.EngineError, metrics: Recorder | None = None) -> JSONResponse:
    """The one place an engine fault becomes a response: a refusal is counted as shed here."""
    fault = FAULTS[type(exc)]
    if metrics is not None and fault.type in SHED_REASONS:
        metrics.shed(fault.type)
    return error_response(fault.status, fault.type, str(exc), RETRY_AFTER if fault.retry else None)


def describe(validation_errors: list[dict]) -> str:
    """Pydantic's errors as one line: ``field: message; ...``."""
    parts = []
    for err in validation_errors:
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


async def _api_error(_: Request, exc: ApiError):
    return error_response(exc.status, exc.type, exc.message)


async def _engine_fault(request: Request, exc: errors.EngineError):
    return fault_response(exc, request.app.state.engine.metrics)


async def _validation_error(_: Request, exc: RequestValidationError):
    return error_response(422, "validation_error", describe(exc.errors()))


async def _http_error(_: Request, exc: HTTPException):
    # FastAPI's own errors (unknown route, wrong method) in our error format.
    kind = {404: "not_found", 405: "method_not_allowed"}
    return error_response(
        exc.status_code, kind.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
    )


async def _internal_error(request: Request, exc: Exception):
    # Starlette answers this one outside every middleware: the request id is added here.
    logger.exception("unhandled error")
    request_id = request.scope.get(REQUEST_ID_KEY)
    return error_response(
        500,
        "internal_error",
        "the server failed to handle this request",
        {REQUEST_ID_HEADER: request_id} if request_id else None,
    )


def register(api: FastAPI) -> None:
    api.add_exception_handler(ApiError, _api_error)
    for fault_type in FAULTS:
        api.add_exception_handler(fault_type, _engine_fault)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _internal_error)
