"""The chat demo page at `/`: plain HTML, CSS and JavaScript served from `guardrail/server/static`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["ui"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The chat page; its script talks to this server's own API (a key, if any, is asked for)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's assets, mounted at /static."""
    return StaticFiles(directory=STATIC_DIR)
