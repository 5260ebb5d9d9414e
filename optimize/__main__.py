"""``python -m optimize``: the SageMaker model artifact with precompiled weights.

python -m optimize build --model stabilityai/sd-turbo --output model.tar.gz
python -m optimize build --model tiny --device cpu --output artifact/ --sizes 64
python -m optimize build --model sd-turbo-random --output model/ --upload s3://bucket/sd/
python -m optimize sagemaker-build ...   (the same build, as a SageMaker job on the endpoint's GPU)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optimize.sagemaker_job import add_sagemaker_parser
from serve_app.cli import run_command
from serve_app.config import ModelSettings, parse_int_list, parse_key_value
from serve_app.full import FULL_MODEL

DEFAULTS = ModelSettings()  # the server's defaults are the build's: one home


def _int_list(text: str) -> list[int]:
    try:
        return parse_int_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=DEFAULTS.device,
        help="target device: fp16 weights for cuda, float32 for cpu; compiling "
        "needs the target present (default: cuda if available)",
    )
    build.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile every configured shape and ship the cache (default: on)",
    )
    build.add_argument(
        "--compile-mode",
        default=DEFAULTS.compile_mode,
        help="torch.compile mode (default: %(default)s)",
    )
    build.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=DEFAULTS.compile_batch_sizes,
        help="batch sizes to compile, comma-separated (default: %(default)s)",
    )
    build.add_argument(
        "--sizes",
        type=_int_list,
        default=DEFAULTS.warmup_sizes,
        help="square resolutions to compile, comma-separated (default: %(default)s)",
    )
    build.add_argument(
        "--set",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model setting, e.g. --set fuse_qkv=false --set vae=madebyollin/taesd",
    )
    build.add_argument(
        "--upload",
        metavar="S3_URL",
        help="s3://bucket/key for a tarball (a key ending in / gets its name), "
        "s3://bucket/prefix/ for a folder",
    )
    build.add_argument("--endpoint-url", help="S3 endpoint (default: AWS's; for tests)")
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

    settings = ModelSettings.model_validate(
        {
            "model": args.model,
            "device": args.device,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "compile_batch_sizes": args.batch_sizes,
            "warmup_sizes": args.sizes,
            **dict(args.set),
        }
    )
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
