"""``sdturbo invoke``: one request to a local server or a SageMaker endpoint, images to files.

    sdturbo invoke "a futuristic cat floating in the clouds" -o cat.png
    sdturbo invoke "a cat" --endpoint sdturbo-sync -o cat.png
    sdturbo invoke "a cat" --endpoint sdturbo-async --async --bucket my-bucket -o cat.png
    sdturbo invoke "a watercolour" --image sketch.png --strength 0.5 --steps 2 -o out.png

No torch, no Ray, nothing of the server: the API's schema (``serve_app.schemas``), requests for
HTTP, boto3 (imported only when needed) for SageMaker.

- ``request``: the body, from options generated from the request schema
- ``local``: a local server's /predict
- ``sagemaker``: sync and async endpoints (S3 upload and polling)
- ``progress``: the async wait's progress bar
- ``results``: decoding an answer, errors as one line
- ``command``: ``sdturbo invoke`` itself
"""

from serve_app.client.command import (
    DEFAULT_URL,
    add_invoke_parser,
    describe,
    invoke_command,
    output_paths,
    save_images,
)
from serve_app.client.local import invoke_local
from serve_app.client.progress import LogLines, progress_printer
from serve_app.client.request import add_request_options, build_request
from serve_app.client.results import InvokeError, decode_result
from serve_app.client.sagemaker import (
    INVOKE_RETRIES,
    S3_RETRIES,
    aws_clients,
    invoke_async,
    invoke_sync,
    split_s3_uri,
    submit_async,
    wait_for_result,
)

__all__ = [
    "DEFAULT_URL",
    "INVOKE_RETRIES",
    "S3_RETRIES",
    "InvokeError",
    "LogLines",
    "add_invoke_parser",
    "add_request_options",
    "aws_clients",
    "build_request",
    "decode_result",
    "describe",
    "invoke_async",
    "invoke_command",
    "invoke_local",
    "invoke_sync",
    "output_paths",
    "progress_printer",
    "save_images",
    "split_s3_uri",
    "submit_async",
    "wait_for_result",
]
