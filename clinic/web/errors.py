"""Errors as the caller can use them: JSON for the API (``/api/...``), pages for people.

A page that needs a login redirects to ``/login?next=...``; other page errors render a short HTML
page. Unexpected errors never echo their text (it may hold patient data); the log gets the type
and the request path only.
"""

from __future__ import annotations

import logging
import traceback
from urllib.parse import quote

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from clinic.web.deps import is_api_request
from clinic.web.templating import render

log = logging.getLogger(__name__)

_TITLES = {
    status.HTTP_401_UNAUTHORIZED: "Sign-in required",
    status.HTTP_403_FORBIDDEN: "Not available for your role",
    status.HTTP_404_NOT_FOUND: "Not found",
    status.HTTP_422_UNPROCESSABLE_CONTENT: "Invalid request",
}


def _page(request: Request, code: int, message: str) -> Response:
    return render(
        request,
        "error.html",
        {"status_code": code, "title": _TITLES.get(code, "Error"), "message": message},
        status_code=code,
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if is_api_request(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == status.HTTP_401_UNAUTHORIZED:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"/login?next={quote(target, safe='')}", status_code=status.HTTP_303_SEE_OTHER
        )
    return _page(request, exc.status_code, str(exc.detail))


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if is_api_request(request):
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return _page(request, status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(str(e["msg"]) for e in errors))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The frames only: an exception's message can carry bound SQL parameters, i.e. patient data.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled %s on %s %s\n%s", type(exc).__name__, request.method, request.url.path, frames)
    if is_api_request(request):
        return JSONResponse({"detail": "internal error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return _page(request, status.HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong; it has been logged.")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
