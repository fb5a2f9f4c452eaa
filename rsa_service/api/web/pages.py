"""The UI's routes: two page shells rendered from templates, and the static scripts and styles they load."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).resolve().parent
STATIC_PREFIX = "/static"
# Pages load only their own scripts, styles and API: nothing from another origin, no inline code.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))


def _page(request: Request, template: str, **context: object) -> HTMLResponse:
    auth = request.app.state.keyring.enabled
    html = _templates.get_template(template).render(auth=auth, static=STATIC_PREFIX, **context)
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/")
async def job_list(request: Request) -> HTMLResponse:
    return _page(request, "list.html")


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", job_id=job_id)


def install(app: FastAPI) -> None:
    """Serve the UI's pages and static files on `app`."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=HERE / "static"), name="static")
