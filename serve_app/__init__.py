"""Ray Serve application serving stabilityai/sd-turbo."""

from serve_app.app import build_app

# `serve run serve_app:app model=tiny` calls this builder with typed arguments.
app = build_app

__all__ = ["app", "build_app"]
