"""The application builder: ``serve run serve_app:app key=value ...``."""

from __future__ import annotations

import sys
from pathlib import Path

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.deployment import SDTurboModel


def visible_gpus(args: AppArgs) -> int:
    """GPUs this app may use: none on device=cpu, else what torch sees (NVML, no CUDA context)."""
    if args.device == "cpu":
        return 0
    import torch  # only to count GPUs; replicas do the real work

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def with_artifact_settings(args: AppArgs) -> AppArgs:
    """An artifact from `optimize build` names the settings its compile cache was made with;
    use them for every setting the caller left unset, when it was built for this device kind."""
    from serve_app.pipeline.compile_cache import read_manifest_quietly

    manifest = read_manifest_quietly(args.model) if Path(args.model).is_dir() else None
    if not manifest:
        return args
    device_kind = "cuda" if visible_gpus(args) else "cpu"
    if manifest.get("environment", {}).get("device_kind") != device_kind:
        return args  # the server logs why the cache does not fit
    built = manifest.get("serve_settings", {})
    unset = {key: value for key, value in built.items() if key not in args.model_fields_set}
    return AppArgs.model_validate({**args.model_dump(), **unset})


def replica_options(args: AppArgs, gpus: int) -> dict:
    """One replica per visible GPU unless told otherwise; autoscaling when min != max."""
    low = args.min_replicas if args.min_replicas is not None else max(gpus, 1)
    high = args.max_replicas if args.max_replicas is not None else max(low, 1)
    if low == high:
        return {"num_replicas": low}
    return {
        "autoscaling_config": {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            # One full batch in flight per replica is the steady state worth scaling to.
            "target_ongoing_requests": args.max_batch_size,
            "upscale_delay_s": 2,
            "downscale_delay_s": 60,
        }
    }


def build_app(args: AppArgs | dict) -> Application:
    """The builder of ``serve run serve_app:app key=value ...`` and ``serve_config.yaml``:
    Serve calls it with exactly one argument, the arguments as a dict (strings from the command
    line), validated here as ``AppArgs``."""
    app = compose(AppArgs.model_validate(args))
    if launched_by_serve_run():
        from serve_app.server import exit_when_the_model_fails, start_for_serve_run

        start_for_serve_run()
        exit_when_the_model_fails()
    return app


def launched_by_serve_run(argv=None) -> bool:
    """This process is ``serve run`` (which calls the builder in its own process; ``serve
    deploy`` builds in Serve's controller, which must never exit)."""
    argv = sys.argv if argv is None else argv
    return len(argv) > 1 and Path(argv[0]).name == "serve" and argv[1] == "run"


def compose(args: AppArgs, backend_factory=None, version: str | None = None) -> Application:
    """One deployment: each replica is the HTTP ingress and the batching model.

    ``backend_factory`` (tests and benchmarks) replaces the diffusers backend, e.g. to inject
    faults. ``version`` names the code's version: deployed again under the same one with other
    batch knobs, Serve calls ``reconfigure`` on the running replicas instead of replacing them
    (``serve.run`` otherwise gives every call a random version, ray/serve/_private/client.py;
    ``options(version=)`` is internal since Serve decides versions itself).
    """
    args = with_artifact_settings(args)
    gpus = visible_gpus(args)
    num_gpus = args.num_gpus if args.num_gpus is not None else (1.0 if gpus else 0.0)
    model = SDTurboModel.options(
        **replica_options(args, gpus),
        user_config=args.batch_config().model_dump(),
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": num_gpus},
        **({"version": version, "_internal": True} if version else {}),
    )
    return model.bind(
        args.model_settings(), args.request_timeout_s, backend_factory, args.metrics_settings()
    )
