"""The application builder: ``serve run serve_app:app key=value ...``."""

from ray.serve import Application

from serve_app.config import AppArgs
from serve_app.ingress import Ingress
from serve_app.model import SDTurboModel


def _wants_gpu(args: AppArgs) -> bool:
    if args.device != "auto":
        return args.device == "cuda"
    import torch  # only to look for a GPU; replicas do the real work

    return torch.cuda.is_available()


def _with_artifact_settings(args: AppArgs) -> AppArgs:
    """An artifact from `optimize build` names the settings its compile cache was made with;
    use them for every setting the caller left unset, when it was built for this device kind."""
    from pathlib import Path

    from serve_app.compile_cache import read_manifest_quietly

    manifest = read_manifest_quietly(args.model) if Path(args.model).is_dir() else None
    if not manifest:
        return args
    device_kind = "cuda" if _wants_gpu(args) else "cpu"
    if manifest.get("environment", {}).get("device_kind") != device_kind:
        return args  # the server logs why the cache does not fit
    built = manifest.get("serve_settings", {})
    unset = {key: value for key, value in built.items() if key not in args.model_fields_set}
    return AppArgs.model_validate({**args.model_dump(), **unset})


def build_app(args: AppArgs) -> Application:
    """Build the two-deployment application: a light HTTP ingress and the batching model."""
    args = _with_artifact_settings(args)
    if args.min_replicas == args.max_replicas:
        scaling = {"num_replicas": args.min_replicas}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": args.min_replicas,
                "max_replicas": args.max_replicas,
                "initial_replicas": max(args.min_replicas, 1),
                # One full batch in flight per replica is the steady state worth scaling to.
                "target_ongoing_requests": args.max_batch_size,
                "upscale_delay_s": 2,
                "downscale_delay_s": 60,
            }
        }
    num_gpus = args.num_gpus if args.num_gpus is not None else float(_wants_gpu(args))
    model = SDTurboModel.options(
        **scaling,
        user_config=args.batch_config().model_dump(),
        # Batches only fill if a replica accepts at least a batch's worth of requests.
        max_ongoing_requests=args.max_ongoing_requests or 2 * args.max_batch_size,
        max_queued_requests=args.max_queued_requests,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": num_gpus},
    ).bind(args.model_settings())
    return Ingress.bind(model, args.model, args.request_timeout_s)
