"""One mapping from exceptions to what a caller is told, shared by the HTTP and ZeroMQ front-ends."""
from __future__ import annotations

import logging

from bertserve.engine.batcher import QueueFull, RequestTooLarge, ServerClosing

log = logging.getLogger("bertserve.serve")


class ApiError(Exception):
    """A caller's fault found by a front-end itself (bad field, bad key, ...)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.type = type_


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error type, message). Anything not known to be the caller's fault is a 500."""
    if isinstance(exc, ApiError):
        return exc.status, exc.type, str(exc)
    if isinstance(exc, QueueFull):
        return 429, "rate_limit_error", str(exc)
    if isinstance(exc, ServerClosing):
        return 503, "server_unavailable", str(exc)
    if isinstance(exc, RequestTooLarge):
        return 413, "request_too_large", str(exc)
    if isinstance(exc, (TypeError, ValueError)):
        return 400, "invalid_request_error", str(exc) or type(exc).__name__
    log.error("internal error while serving a request: %r", exc, exc_info=exc)
    return 500, "internal_error", f"internal server error ({type(exc).__name__}); see the server log"
