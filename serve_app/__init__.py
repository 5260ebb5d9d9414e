"""Ray Serve application serving stabilityai/sd-turbo."""

__all__ = ["app", "build_app"]


def __getattr__(name: str):
    # `serve run serve_app:app` looks the builder up here; importing it lazily keeps Ray Serve
    # out of light commands such as `sdturbo invoke`.
    if name in __all__:
        from serve_app.app import build_app

        return build_app
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
