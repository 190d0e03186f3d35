"""Ceiling: an empty Starlette endpoint. POST / answers 202 without reading the body."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.apps._common import signed_url

__all__ = ["app", "signed_url"]


async def webhook(request: Request) -> Response:
    return JSONResponse({"status": "accepted"}, status_code=202)


app = Starlette(routes=[Route("/", webhook, methods=["POST"])])
