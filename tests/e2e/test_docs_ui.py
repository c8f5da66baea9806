"""/docs works without the internet: every URL the page loads is on this server and answers 200."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import urljoin, urlparse

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from server_support import free_port

from serve.server.docs_ui import STATIC, install_docs


@contextlib.contextmanager
def _serve(app: FastAPI, root_path: str = "") -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           root_path=root_path))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _app() -> FastAPI:
    app = FastAPI(title="abstain", docs_url=None, redoc_url=None)

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    install_docs(app)
    return app


def _urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


def test_docs_page_loads_only_local_assets() -> None:
    with _serve(_app()) as base:
        r = httpx.get(base + "/docs", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "SwaggerUIBundle" in r.text and '"validatorUrl": null' in r.text
        urls = _urls(r.text)
        assert len(urls) == 4, urls            # css, favicon, js, the OpenAPI schema
        assert not re.search(r"https?://", r.text), "the page names an external host"
        for url in urls:
            assert not urlparse(url).netloc, url
            got = httpx.get(urljoin(base + "/docs", url), timeout=10)
            assert got.status_code == 200, url
            if url.endswith("openapi.json"):
                assert "/v2/health/live" in got.json()["paths"]
                assert "/docs" not in got.json()["paths"]                # not part of the API
            else:
                assert got.content == (STATIC / url.rsplit("/", 1)[1]).read_bytes(), url
        js = httpx.get(base + "/docs/assets/swagger-ui-bundle.js", timeout=10)
        assert js.headers["content-type"].startswith("text/javascript")
        assert httpx.get(base + "/docs/assets/../LICENSE", timeout=10).status_code == 404


def test_docs_urls_follow_the_proxy_root_path() -> None:
    with _serve(_app(), root_path="/abstain") as base:
        html = httpx.get(base + "/docs", timeout=10).text
        assert {u.split("/")[1] for u in _urls(html)} == {"abstain"}, _urls(html)


def test_install_docs_needs_the_schema() -> None:
    with pytest.raises(ValueError, match="openapi_url"):
        install_docs(FastAPI(docs_url=None, openapi_url=None))
