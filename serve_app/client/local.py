"""A local server: POST /predict."""

from __future__ import annotations

from serve_app.client.results import InvokeError, decode_result, error_text


def invoke_local(url: str, body: dict, timeout_s: float) -> dict:
    import requests

    target = url.rstrip("/") + "/predict"
    try:
        response = requests.post(target, json=body, timeout=timeout_s)
    except requests.ConnectionError:
        raise InvokeError(f"cannot connect to {url} (is the server running?)") from None
    except requests.Timeout:
        raise InvokeError(f"no response from {target} within {timeout_s:g} s") from None
    if response.status_code != 200:
        raise InvokeError(f"server returned {error_text(response.status_code, response.content)}")
    return decode_result(response.content)
