"""``/docs`` without the internet: Swagger UI served from the package, not from a public CDN.

FastAPI's default ``/docs`` page loads its JavaScript and CSS from a CDN, so it is blank on
air-gapped or firewalled deployments. :func:`install_docs` adds a ``/docs`` page whose every
asset is one of the vendored files in ``serve/server/static/swagger-ui/`` (see its README for version
and licence), answered by fixed routes (no directory is exposed). The spec validator badge, which
Swagger UI would fetch from validator.swagger.io, is switched off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

STATIC = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_PREFIX = "/docs/assets"
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
          "swagger-ui.css": "text/css; charset=utf-8",
          "favicon-32x32.png": "image/png"}


def install_docs(app: FastAPI, path: str = "/docs") -> None:
    """Add ``path`` (Swagger UI for ``app.openapi_url``) and its assets to ``app``.

    Create the app with ``docs_url=None`` so FastAPI's CDN-backed page is not registered too.
    URLs honour the ASGI ``root_path``, so the page works behind a path-prefixing proxy.
    """
    if app.openapi_url is None:
        raise ValueError("install_docs needs the app's OpenAPI schema (openapi_url is None)")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} – API docs",
            swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PREFIX}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})

    app.add_api_route(path, docs, methods=["GET"], include_in_schema=False)
    for name, media_type in ASSETS.items():
        app.add_api_route(f"{ASSETS_PREFIX}/{name}", _asset(name, media_type), methods=["GET"],
                          include_in_schema=False)


def _asset(name: str, media_type: str):
    file = STATIC / name

    async def serve_asset() -> FileResponse:
        return FileResponse(file, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})

    serve_asset.__name__ = f"docs_asset_{name.replace('-', '_').replace('.', '_')}"
    return serve_asset
