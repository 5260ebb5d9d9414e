"""The request body from the command line: every option generated from the API's schema
(``serve_app.schemas.GenerateRequest``), checked before anything is sent."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from pydantic import ValidationError

from serve_app.client.results import InvokeError
from serve_app.schemas import GenerateRequest

# Every request field is an option, typed, bounded and described by the API's own schema
# (serve_app.schemas.GenerateRequest); the shorter spellings of earlier releases stay as aliases.
ALIASES = {"num_inference_steps": "--steps", "output_format": "--format"}
JSON_TYPES = {"integer": int, "number": float, "string": str}


def build_request(args: argparse.Namespace) -> dict:
    """The JSON body: the prompt and every option given (the server has the defaults), checked
    against the request schema before anything is sent."""
    body = {"prompt": args.prompt}
    for field in GenerateRequest.model_fields:
        value = getattr(args, field, None)
        if field not in ("prompt", "image") and value is not None:
            body[field] = value
    if args.image is not None:
        try:
            body["image"] = base64.b64encode(Path(args.image).read_bytes()).decode("ascii")
        except OSError as exc:
            raise InvokeError(f"--image: {exc}") from None
    try:
        GenerateRequest.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvokeError(f"invalid request: {problems}") from None
    return body


def add_request_options(group) -> None:
    properties = GenerateRequest.model_json_schema()["properties"]
    for field, spec in properties.items():
        if field in ("prompt", "image"):  # the prompt is positional; --image takes a path
            continue
        spec = {**spec, **spec.get("anyOf", [{}])[0]}  # optional fields: the non-null branch
        flags = [f"--{field.replace('_', '-')}", *([ALIASES[field]] if field in ALIASES else [])]
        low = spec.get("minimum", spec.get("exclusiveMinimum"))
        bounds = [f"{low:g}-{spec['maximum']:g}"] if "maximum" in spec else []
        bounds += [f"multiple of {spec['multipleOf']}"] if "multipleOf" in spec else []
        group.add_argument(
            *flags,
            dest=field,
            type=JSON_TYPES[spec["type"]],
            choices=spec.get("enum"),
            help=spec.get("description", "") + (f" ({', '.join(bounds)})" if bounds else ""),
        )
