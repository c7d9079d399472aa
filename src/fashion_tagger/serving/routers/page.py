"""`GET /`: the web page (its assets are served by the app itself under /static)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """Drop or pick photos and see their category path, scores and attributes."""
    html = resources.files("fashion_tagger.serving").joinpath("static/index.html").read_text()
    return HTMLResponse(html)
