"""GET / : the service's own web page (playground, training, models), or the API docs when it is off
(CHARRNN_UI=false). The page is static (app/web/, served under /ui/) and talks only to the public API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/ui"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # index.html, app.js, app.css, vendor/

# Only the page's own files run or style it; no inline script or style attribute, no other host, no
# frame around it. Model output and training text reach the page as data and are inserted as text.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new version of the service shows its new page
}

router = APIRouter(include_in_schema=False)


class WebFiles(StaticFiles):
    """The page's files (under /ui/), with the page's policy: also index.html opened from there."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@router.get("/", response_model=None)
async def home(request: Request) -> Response:
    """The web page; with CHARRNN_UI off, a person who opens the service lands on the API docs."""
    if not request.app.state.settings.ui:
        return RedirectResponse(request.scope.get("root_path", "") + "/docs", status_code=307)
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
