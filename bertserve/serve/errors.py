"""HTTP's side of the one error mapping (bertserve.errors.describe): JSON bodies and the app's handlers.

Every route of every plug-in raises bertserve.errors classes; these handlers are the only place an exception
becomes an HTTP answer, so every error is counted in /metrics. An exception that is not one of ours is a bug:
it is answered 500 with a request id that also appears next to its traceback in the log.
"""
from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertserve.errors import BertserveError, describe

log = logging.getLogger("bertserve.serve")

HANDLED_BASES = (BertserveError, ArithmeticError, AssertionError, AttributeError, LookupError, MemoryError,
                 OSError, RecursionError, RuntimeError, TypeError, ValueError)
STARLETTE_TYPES = {401: "authentication_error", 404: "not_found", 405: "method_not_allowed"}


def error_body(status: int, type_: str, message: str) -> dict:
    return {"error": {"message": message, "type": type_, "code": status}}


def error_response(status: int, type_: str, message: str, metrics=None, request_id: str | None = None) -> JSONResponse:
    if metrics is not None:
        metrics.observe_error("http", type_)
    body = error_body(status, type_, message)
    headers = {"Retry-After": "1"} if status in (429, 503) else {}  # busy or closing: when to try again
    if request_id:
        body["error"]["request_id"] = request_id
        headers["X-Request-Id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers or None)


def exception_response(exc: BaseException, metrics=None, where: str = "HTTP request") -> JSONResponse:
    report = describe(exc)
    if not report.internal:
        return error_response(report.status, report.type, report.message, metrics)
    request_id = uuid.uuid4().hex[:16]
    log.error("internal error while serving %s (request id %s)", where, request_id, exc_info=exc)
    return error_response(report.status, report.type, f"{report.message}; see the server log, request id "
                          f"{request_id}", metrics, request_id)


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())[1:]) or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
        elif loc == "body" and err.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("request body must be a JSON object (sent with Content-Type: application/json)")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, metrics=None) -> None:
    """The app's only exception handlers: body validation, Starlette's own HTTP errors, everything else."""

    async def validation(request, exc: RequestValidationError):
        return error_response(400, "invalid_request_error", validation_message(exc), metrics)

    async def http_error(request, exc: StarletteHTTPException):
        type_ = STARLETTE_TYPES.get(exc.status_code,
                                    "invalid_request_error" if exc.status_code < 500 else "internal_error")
        return error_response(exc.status_code, type_, str(exc.detail), metrics)

    async def any_error(request, exc: Exception):
        return exception_response(exc, metrics, f"{request.method} {request.url.path}")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Starlette answers a handler registered for Exception itself and then re-raises (a second traceback in
    # the log); handlers for the common bases answer without that, and Exception catches the rest.
    for cls in HANDLED_BASES + (Exception,):
        app.add_exception_handler(cls, any_error)
