"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py): an input image that is
a picture. The schema can say `image` is a base64 string of bounded length, not that it decodes
to a PNG, JPEG or WebP; a random string is rightly refused (422), which schemathesis would count
as a schema-valid request rejected. A string the schema accepts becomes a real 8x8 PNG; a
schema-invalid one (empty, or not a string) is left for the negative checks."""

import base64
import io

import schemathesis
from PIL import Image

_buffer = io.BytesIO()
Image.new("RGB", (8, 8), (200, 40, 40)).save(_buffer, format="PNG")
PNG_BASE64 = base64.b64encode(_buffer.getvalue()).decode()
MAX_LENGTH = 8 * 2**20  # GenerateRequest.image's max_length


def _with_a_picture(body):
    image = body.get("image") if isinstance(body, dict) else None
    if isinstance(image, str) and 1 <= len(image) <= MAX_LENGTH:
        return {**body, "image": PNG_BASE64}
    return body


@schemathesis.hook
def map_case(context, case):
    # map_case, not map_body: the coverage phase builds its cases without the body hooks.
    case.body = _with_a_picture(case.body)
    return case
