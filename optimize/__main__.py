"""``python -m optimize``: the SageMaker model artifact with precompiled weights.

python -m optimize build --model stabilityai/sd-turbo --compile --output model.tar.gz
python -m optimize build --model tiny --device cpu --compile --warmup-sizes 64 --output artifact/
python -m optimize build --model sd-turbo-random --output model/ --upload s3://bucket/sd/
python -m optimize sagemaker-build ...   (the same build, as a SageMaker job on the endpoint's GPU)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from optimize.sagemaker_job import add_sagemaker_parser
from serve_app.cli import run_command
from serve_app.config import ModelSettings, add_settings_options, parse_key_value, settings_given
from serve_app.models.random_full import FULL_MODEL


def add_build_parser(commands) -> argparse.ArgumentParser:
    build = commands.add_parser("build", help="write weights, compile cache and manifest")
    build.add_argument(
        "--model",
        required=True,
        help=f"hub id, local diffusers folder, 'tiny', or '{FULL_MODEL}' (the "
        "full architecture with random weights)",
    )
    build.add_argument(
        "--output",
        required=True,
        type=Path,
        help="model.tar.gz (SageMaker ModelDataUrl), or a folder to upload "
        "uncompressed (ModelDataSource, CompressionType None)",
    )
    build.add_argument(
        "--set",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model setting by its name, e.g. --set fuse_qkv=false (the same as --no-fuse-qkv)",
    )
    build.add_argument(
        "--upload",
        metavar="S3_URL",
        help="s3://bucket/key for a tarball (a key ending in / gets its name), "
        "s3://bucket/prefix/ for a folder",
    )
    build.add_argument("--endpoint-url", help="S3 endpoint (default: AWS's; for tests)")
    # The server's settings, under the server's names and defaults: --compile ships a compile
    # cache of --warmup-sizes x --batch-buckets for the target --device.
    add_settings_options(
        build.add_argument_group("model settings (serve_app.config.ModelSettings)"),
        ModelSettings,
        exclude={"model"},
    )
    build.set_defaults(func=build_command)
    return build


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m optimize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_build_parser(commands)
    add_sagemaker_parser(commands)
    return parser


def build_command(args: argparse.Namespace) -> int:
    from optimize.build import build

    try:
        settings = ModelSettings.model_validate(
            {"model": args.model, **dict(args.set), **settings_given(args, ModelSettings)}
        )
    except ValidationError as exc:
        print(f"optimize build: error: invalid settings: {exc}", file=sys.stderr)
        return 2
    result = build(settings, args.output, args.upload, args.endpoint_url)
    manifest = result.manifest
    total = sum(entry["bytes"] for entry in manifest["files"])
    summary = {
        "output": str(result.output),
        "bytes": result.output.stat().st_size if result.output.is_file() else total,
        "dtype": manifest["dtype"],
        "device": manifest["environment"]["device_kind"],
        "shapes_compiled": len(manifest["compile"].get("shapes", [])),
        "timings_s": {name: round(s, 1) for name, s in result.timings.items()},
        "uploaded": result.uploaded,
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
