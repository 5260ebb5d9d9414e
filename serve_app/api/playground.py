"""GET /: a one-page playground for local runs. Self-contained (no CDN), no torch.

The page (``static/playground.html``, package data) posts to /predict with fetch and shows the
image, its timings and the last results.
"""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()
PAGE = files("serve_app").joinpath("static/playground.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(PAGE)
