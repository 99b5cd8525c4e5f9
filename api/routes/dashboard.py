"""The web dashboard: one static page at `/`, its files under `/ui/`, all outside the OpenAPI schema.

The page is a small vanilla-JS app (`api/dashboard/`) over the `/v1` API: it asks for an API key,
keeps it in the tab's `sessionStorage` and sends it as `Authorization: Bearer` on every request, so the
page itself needs no key and serves no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"

# The page loads only its own files and talks only to this API: no inline script or style, no other origin.
# blob: lets a checkpoint fetched with the bearer header be saved as a file.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    """The dashboard's page; the app routes by the URL's fragment (`#/jobs/ID`)."""
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at `/` and its scripts, styles and the vendored chart library under `/ui/`."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")
