"""The page at / (serving/static: HTML, CSS and plain JavaScript, no build step) and the API docs at /docs
and /redoc with their assets served from the package fastapi-offline, so that both work with no internet.

None of these routes is in the OpenAPI document. Their responses carry a Content-Security-Policy and
nosniff; the API routes do not pay for it (the headers are set here, not by a middleware)."""
from __future__ import annotations

import base64
import hashlib
import re
from functools import partial
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI 5 and ReDoc 2 bundles

COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}  # on every response here
# The page: its own files only, no inline script or style, no eval; it talks to this origin alone.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, **COMMON_HEADERS}
# Swagger UI and ReDoc set styles inline and ReDoc searches in a blob: worker; Swagger UI's one inline
# script is allowed by its hash (docs_headers), nothing else inline runs.
DOCS_CSP = ("default-src 'none'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
FAVICON = "/static/favicon.svg"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


class WithHeaders:
    """An ASGI app whose responses get these headers too (the static files': the page's CSP, nosniff)."""

    def __init__(self, app, headers: dict[str, str]):
        self.app = app
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def docs_page(request: Request, render, title: str, **assets: str) -> HTMLResponse:
    """FastAPI's docs page `render` with our asset paths, under a CSP that allows its inline scripts by
    their SHA-256 and nothing else inline."""
    root = request.scope.get("root_path", "")
    page = render(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - {title}",
                  **{key: root + path for key, path in assets.items()})
    hashes = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
              for script in INLINE_SCRIPT.findall(page.body.decode())]
    page.headers.update({"Content-Security-Policy": DOCS_CSP.format(scripts="".join(f" 'sha256-{h}'" for h in hashes)),
                         **COMMON_HEADERS})
    return page


router = APIRouter(include_in_schema=False)
router.mount("/static", WithHeaders(StaticFiles(directory=STATIC), PAGE_HEADERS), name="static")
router.mount("/docs-assets", WithHeaders(StaticFiles(directory=DOCS_ASSETS), COMMON_HEADERS), name="docs-assets")


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    # No validator badge: it would fetch an image from validator.swagger.io on any host but this machine.
    render = partial(get_swagger_ui_html, swagger_ui_parameters={"validatorUrl": None})
    return docs_page(request, render, "Swagger UI", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                     swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url=FAVICON)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return docs_page(request, partial(get_redoc_html, with_google_fonts=False), "ReDoc",
                     redoc_js_url="/docs-assets/redoc.standalone.js", redoc_favicon_url=FAVICON)
