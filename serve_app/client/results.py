"""What a server answers, for the client: images out of a JSON result, errors as one line."""

from __future__ import annotations

import base64
import json


class InvokeError(Exception):
    """A failure worth one line to the user; the command exits non-zero."""


def error_text(status: int | str, body: bytes | str) -> str:
    """One line from an error body: ours is {"error": {"type", "message"}}, others are shown raw."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        error = json.loads(text)["error"]
        return f"{status} {error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {' '.join(text.split())[:300] or '(empty body)'}"


def decode_result(body: bytes) -> dict:
    """A response body as a dict with 'images' (bytes): our JSON, or raw image bytes."""
    if body[:1] != b"{":
        return {"images": [body]}
    try:
        result = json.loads(body)
        encoded = result.get("images") or [result["image"]]
        result["images"] = [base64.b64decode(image) for image in encoded]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvokeError(f"response is not an image result: {exc}") from None
    return result
