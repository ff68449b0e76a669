"""The jam page at `GET /`: static, self-contained files (no CDN) that play over WebRTC or fall back to /ws/jam."""

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def page_routes() -> list[BaseRoute]:
    """`GET /` (the page) and `/static/*` (its script and style sheet)."""

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return [Route("/", index), Mount("/static", app=StaticFiles(directory=STATIC), name="static")]
