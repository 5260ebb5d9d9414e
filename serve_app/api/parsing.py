"""Bodies in and out: a request from JSON or text/plain, the response's media type from Accept,
and the JSON body of a result."""

from __future__ import annotations

import base64

from pydantic import ValidationError

from serve_app.api.errors import ApiError, describe
from serve_app.config import MAX_BODY_BYTES
from serve_app.engine import GenerateResult
from serve_app.schemas import MEDIA_TYPES, GenerateRequest


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
        raise ApiError(422, "validation_error", describe(errors)) from None


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
