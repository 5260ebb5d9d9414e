"""``python -m optimize.release``: the steps around ``terraform apply`` that make a release safe.

    live    before the plan: what each endpoint serves now and how many instances it runs, as a
            tfvars file (``live_releases``). Terraform keeps that release's model and endpoint
            config through this release, and starts the new fleet with that many instances.
    bake    during the apply: a small async request every ``--interval`` seconds while the async
            endpoint updates, so its rollback alarms see traffic even when it sat at zero.
    verify  after the apply: each endpoint is InService on the endpoint config this release
            created. The provider reports success after a blue/green rollback too (it waits
            for InService only), so this is what fails the release, loudly. Then an async
            endpoint that was at zero before the release goes back to zero (--keep-warm: not).

Only boto3 is needed (the workflow runs it without the serving dependencies):

    python -m optimize.release live --name sdturbo --output infra/live.tfvars.json
    python -m optimize.release bake --from-terraform infra
    python -m optimize.release verify --from-terraform infra
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from optimize.terraform_outputs import TerraformError, terraform_outputs

KINDS = ("sync", "async")
# Set by Terraform per endpoint (infra/sagemaker.tf), not part of a release's settings.
INJECTED_ENVIRONMENT = (
    "SDTURBO_ENDPOINT_NAME",
    "SDTURBO_VARIANT_NAME",
    "SDTURBO_METRICS_NAMESPACE",
)
BAKE_REQUEST = {"prompt": "a synthetic request during a release's bake", "num_inference_steps": 1}


class ReleaseError(Exception):
    """The release is not what it should be; the message says what a person does next."""


# --- live: what the endpoints serve now ------------------------------------------------------


def _missing(error) -> bool:
    return "Could not find" in str(error) or "ResourceNotFound" in str(error)


def live_release(sm, endpoint: str) -> dict | None:
    """The release an endpoint serves now, in live_releases' terms; None if it does not exist."""
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError as error:
        if _missing(error):
            return None
        raise
    config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    model = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    source = model.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri")
    artifact_uri = source or model["ModelDataUrl"]
    running = described["ProductionVariants"][0]
    environment = model.get("Environment", {})
    return {
        "image_tag": model["Image"].rsplit(":", 1)[1],
        "model_artifact": artifact_uri.removeprefix("s3://").split("/", 1)[1],
        "container_environment": {
            k: v for k, v in environment.items() if k not in INJECTED_ENVIRONMENT
        },
        "instance_type": variant["InstanceType"],
        "inference_ami_version": variant.get("InferenceAmiVersion"),
        # Desired, not current: what autoscaling last asked for.
        "instance_count": running.get(
            "DesiredInstanceCount", running.get("CurrentInstanceCount", 0)
        ),
    }


def live_releases(sm, endpoints: dict[str, str]) -> dict:
    found = {kind: live_release(sm, name) for kind, name in endpoints.items()}
    return {"live_releases": {kind: release for kind, release in found.items() if release}}


# --- bake: traffic for the rollback alarms ---------------------------------------------------


def bake_traffic(
    sm,
    runtime,
    s3,
    endpoint: str,
    bucket: str,
    *,
    interval_s: float = 30.0,
    give_up_s: float = 4 * 3600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log=print,
) -> list[str]:
    """While ``endpoint`` is Updating, queue one small request per ``interval_s``; stop once it
    has been Updating and no longer is (or after ``give_up_s``). Returns the inference ids.

    Requests go under inputs/direct/ (the bucket's trigger skips them) and are invoked here.
    """
    sent: list[str] = []
    seen_update = False
    start = clock()
    while clock() - start < give_up_s:
        status = sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]
        if status == "Updating":
            seen_update = True
            inference_id = f"bake-{uuid.uuid4().hex[:12]}"
            key = f"inputs/direct/{inference_id}.json"
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(BAKE_REQUEST).encode())
            runtime.invoke_endpoint_async(
                EndpointName=endpoint,
                InputLocation=f"s3://{bucket}/{key}",
                InferenceId=inference_id,
                ContentType="application/json",
            )
            sent.append(inference_id)
            log(f"bake: {endpoint} {status}: queued {inference_id}")
        elif seen_update:
            log(f"bake: {endpoint} {status}: done, {len(sent)} requests")
            return sent
        sleep(interval_s)
    return sent


# --- verify: the release is what serves ------------------------------------------------------


def verify(sm, release: dict, *, keep_warm: bool = False, log=print) -> list[str]:
    """Check every endpoint of ``release`` (terraform output ``release``); raise ReleaseError
    naming each one that is not InService on its new config. Returns what it checked."""
    problems, checked = [], []
    for _kind, expected in sorted(release.items()):
        endpoint = expected["endpoint_name"]
        described = sm.describe_endpoint(EndpointName=endpoint)
        running, status = described["EndpointConfigName"], described["EndpointStatus"]
        if status == "InService" and running == expected["endpoint_config_name"]:
            checked.append(f"{endpoint}: InService on {running} ({expected['model_name']})")
            continue
        kept = running in expected.get("kept_configs", [])
        wanted = expected["endpoint_config_name"]
        problems.append(
            f"{endpoint} is {status} on endpoint config {running}, not on {wanted}"
            f" (model {expected['model_name']}): the update was rolled back or did not finish"
            + (f" ({described['FailureReason']})" if described.get("FailureReason") else "")
            + (
                f". {running} is the live release, kept by this apply: the endpoint serves the"
                " previous model and nothing it runs on was deleted."
                if kept
                else f". {running} is NOT kept by this apply: check that it still exists."
            )
        )
    if problems:
        raise ReleaseError(
            "RELEASE NOT LIVE. "
            + " ".join(problems)
            + " Next: read the alarms that fired (CloudWatch, <endpoint>-5xx-errors,"
            " -model-latency, -queue-wait) and the endpoint's logs, fix the release, and deploy"
            " again: the next plan keeps what serves now (infra/README.md, 'When a release"
            " rolls back')."
        )
    for kind, expected in release.items():
        if expected.get("live_instance_count") == 0 and kind == "async" and not keep_warm:
            endpoint = expected["endpoint_name"]
            sm.update_endpoint_weights_and_capacities(
                EndpointName=endpoint,
                DesiredWeightsAndCapacities=[
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": 0}
                ],
            )
            checked.append(f"{endpoint}: back to 0 instances, as before the release")
    for line in checked:
        log(line)
    return checked


# --- command line ----------------------------------------------------------------------------


def _outputs(folder: Path) -> dict:
    try:
        return terraform_outputs(folder)
    except TerraformError as exc:
        raise ReleaseError(str(exc)) from None


def main(argv: Iterable[str] | None = None) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parser = argparse.ArgumentParser(
        prog="python -m optimize.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--endpoint-url", help="AWS API endpoint override, e.g. a moto server")
    commands = parser.add_subparsers(dest="command", required=True)
    live = commands.add_parser("live", help="what the endpoints serve now, as live_releases")
    live.add_argument(
        "--name", default="sdturbo", help="the stack's name (endpoints NAME-sync, NAME-async)"
    )
    live.add_argument("--output", type=Path, required=True, help="tfvars JSON file to write")
    bake = commands.add_parser("bake", help="async requests while the async endpoint updates")
    bake.add_argument("--from-terraform", type=Path, required=True, metavar="DIR")
    bake.add_argument("--interval", type=float, default=30.0, help="seconds between requests")
    check = commands.add_parser("verify", help="each endpoint runs the config just created")
    check.add_argument("--from-terraform", type=Path, required=True, metavar="DIR")
    check.add_argument(
        "--keep-warm", action="store_true", help="leave an async endpoint that was at 0 running"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)

    session = boto3.session.Session(region_name=args.region)
    sm = session.client("sagemaker", endpoint_url=args.endpoint_url)
    try:
        if args.command == "live":
            endpoints = {kind: f"{args.name}-{kind}" for kind in KINDS}
            found = live_releases(sm, endpoints)
            args.output.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
            print(f"live releases of {', '.join(sorted(found['live_releases'])) or 'no endpoint'}"
                  f" written to {args.output}", file=sys.stderr)  # fmt: skip
        elif args.command == "bake":
            out = _outputs(args.from_terraform)
            if not out.get("async_endpoint_name"):
                print("bake: no async endpoint yet (first deploy): nothing to do", file=sys.stderr)
                return 0
            runtime = session.client("sagemaker-runtime", endpoint_url=args.endpoint_url)
            s3 = session.client("s3", endpoint_url=args.endpoint_url)
            bake_traffic(sm, runtime, s3, out["async_endpoint_name"], out["bucket"],
                         interval_s=args.interval)  # fmt: skip
        else:
            release = _outputs(args.from_terraform).get("release") or {}
            verify(sm, release, keep_warm=args.keep_warm)
    except (ReleaseError, BotoCoreError, ClientError) as exc:
        print(f"::error::{' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
