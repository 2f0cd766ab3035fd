"""OpenAPI docs that work without internet: Swagger UI's files come from the `swagger-ui-bundle` package.

FastAPI's stock /docs and /redoc pages load their scripts from a CDN and stay blank on a plant network.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

SWAGGER_STATIC = "/_swagger"


def mount_offline_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at `docs_url` from packaged assets. Build `app` with docs_url=None and redoc_url=None."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(SWAGGER_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_STATIC}/favicon-32x32.png",
        )
