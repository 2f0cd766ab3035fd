"""Signing in to the console: the admin token once per browser (then a per-login session cookie that logout
revokes) or as a Bearer header; failed sign-ins are rate limited per client. Without an admin token (bound to
loopback) there is no login."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import hmac
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from crux.console.deps import Console, ConsoleConfig, ConsoleDep
from crux.console.sessions import Sessions

SESSION_COOKIE = "crux_console"

router = APIRouter(include_in_schema=False)


def login_required(console: Console, request: Request) -> Response | None:
    """The answer to a request that needs a login and has none (a redirect to the login page, or 401 for figures,
    captures and the API schema); None when the request may go on."""
    path = request.url.path
    is_open = path == "/login" or path.startswith("/static/")  # the login page and its stylesheet
    if console.cfg.admin_token is None or is_open or signed_in(request, console.cfg, console.sessions):
        return None
    if path.startswith(("/captures/", "/openapi.json", "/_swagger/")) or path.endswith((".png", ".svg")):
        return Response("login required", status_code=401)
    return RedirectResponse("/login", status_code=303)


def signed_in(request: Request, cfg: ConsoleConfig, sessions: Sessions) -> bool:
    assert cfg.admin_token is not None
    if sessions.valid(request.cookies.get(SESSION_COOKIE, "")):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode())


@router.get("/login")
def login_form(request: Request, console: ConsoleDep) -> Response:
    if console.cfg.admin_token is None:
        return RedirectResponse("/", status_code=303)
    return console.page(request, "login.html", error=None, signing_in=True, title="Sign in")


@router.post("/login")
def login(request: Request, console: ConsoleDep, token: Annotated[str, Form(max_length=512)]) -> Response:
    admin_token = console.cfg.admin_token
    if admin_token is None:
        return RedirectResponse("/", status_code=303)
    client = request.client.host if request.client else "unknown"
    wait = console.limiter.retry_after(client)
    if wait is not None:
        error = f"Too many failed sign-ins; try again in {wait:.0f} s."
        response = console.page(request, "login.html", 429, error=error, signing_in=True, title="Sign in")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        console.limiter.failed(client)
        return console.page(
            request,
            "login.html",
            401,
            error="That is not the console's admin token.",
            signing_in=True,
            title="Sign in",
        )
    console.limiter.succeeded(client)
    redirect = RedirectResponse("/", status_code=303)
    # A random value per login (logout revokes it); Secure when the console is served over TLS, so the browser
    # never sends it over plain HTTP.
    secure = request.url.scheme == "https"
    redirect.set_cookie(SESSION_COOKIE, console.sessions.open(), httponly=True, samesite="strict", secure=secure)
    return redirect


@router.post("/logout")
def logout(request: Request, console: ConsoleDep) -> Response:
    console.sessions.revoke(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, secure=request.url.scheme == "https", httponly=True, samesite="strict")
    return response
