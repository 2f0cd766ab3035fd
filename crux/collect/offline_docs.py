"""OpenAPI docs that work without internet (the ingest service and the console): Swagger UI's files come from the
`swagger-ui-bundle` package.

FastAPI's stock /docs and /redoc pages load their scripts from a CDN and stay blank on a plant network.

`swagger-ui-bundle` 1.1 ships Swagger UI 4.15, which refuses to render an OpenAPI 3.1 document ("does not specify
a valid version field") while FastAPI writes 3.1. The docs page therefore reads a copy of the schema labelled 3.0.3
(`/_swagger/openapi.json`); clients keep the real 3.1 document at /openapi.json. The operations, parameters and
bodies render; a few 3.1-only schema details (`null` in a type union) show as written. A Swagger UI 5 package
(`swagger-ui-bundle-v2`) would remove the relabelling.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

SWAGGER_STATIC = "/_swagger"
SWAGGER_UI_OPENAPI = "3.0.3"


def mount_offline_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at `docs_url` from packaged assets. Build `app` with docs_url=None and redoc_url=None."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    @app.get(f"{SWAGGER_STATIC}/openapi.json", include_in_schema=False)
    def schema_for_swagger_ui() -> JSONResponse:
        schema: dict[str, Any] = {**app.openapi(), "openapi": SWAGGER_UI_OPENAPI}
        return JSONResponse(schema)

    # After the route above: a mount would otherwise take every path below it.
    app.mount(SWAGGER_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{SWAGGER_STATIC}/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_STATIC}/favicon-32x32.png",
        )
