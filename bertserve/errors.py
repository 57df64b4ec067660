"""One exception hierarchy for everything bertserve tells a caller.

Each class carries what every protocol needs to report it (HTTP status and error type, CLI exit code), so
a front-end maps errors by reading these attributes in exactly one place (`describe`). Only these classes
count as the caller's fault: any other exception that reaches a front-end is a bug and is answered as an
internal error (HTTP 500, with a request id and a logged traceback), never as a 4xx.

The classes also derive from the built-in exception a Python user would expect (ValueError for bad input,
TypeError for a wrong type, KeyError (a LookupError) for something missing, RuntimeError for state conflicts), so code
written against the plain built-ins keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass


class BertserveError(Exception):
    """Base of every error bertserve raises on purpose."""

    status = 500
    type = "internal_error"
    exit_code = 1

    def __str__(self) -> str:  # KeyError-style quoting would garble messages of LookupError subclasses
        return str(self.args[0]) if self.args else self.__class__.__name__


class BadInput(BertserveError, ValueError):
    """The caller sent something the API does not accept (HTTP 400, CLI exit 2)."""

    status = 400
    type = "invalid_request_error"
    exit_code = 2


class BadInputType(BadInput, TypeError):
    """Bad input of the wrong type (a number where a string belongs, ...)."""


class TooLarge(BadInput):
    """One request is larger than the server accepts (HTTP 413)."""

    status = 413
    type = "request_too_large"


class Unauthorized(BadInput):
    """Missing or wrong API key (HTTP 401)."""

    status = 401
    type = "authentication_error"


class NotFound(BertserveError, KeyError):
    """A named thing (collection, id, model, file) does not exist (HTTP 404)."""

    status = 404
    type = "not_found"
    exit_code = 2


class MissingFile(NotFound, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class Conflict(BertserveError, RuntimeError):
    """The request clashes with the current state: already exists, opened elsewhere, locked (HTTP 409)."""

    status = 409
    type = "conflict"
    exit_code = 2


class AlreadyExists(Conflict, FileExistsError):
    """Something the caller wants to create is already there."""


class Overloaded(BertserveError, RuntimeError):
    """The server holds as much work as it may; retry later (HTTP 429)."""

    status = 429
    type = "rate_limit_error"
    exit_code = 3


class Unavailable(BertserveError, RuntimeError):
    """The server is shutting down or a needed part is not installed/served (HTTP 503)."""

    status = 503
    type = "server_unavailable"
    exit_code = 3


class Internal(BertserveError, RuntimeError):
    """Something failed that is not the caller's fault (HTTP 500)."""


@dataclass(frozen=True)
class ErrorReport:
    status: int      # HTTP status
    type: str        # OpenAI-style error type
    message: str
    exit_code: int   # for the CLI
    internal: bool   # True: a bug or a failure of the server; log the traceback


def describe(exc: BaseException) -> ErrorReport:
    """What a caller is told about `exc`: the one mapping every front-end uses."""
    if isinstance(exc, BertserveError) and not isinstance(exc, Internal):
        return ErrorReport(exc.status, exc.type, str(exc), exc.exit_code, False)
    if isinstance(exc, RecursionError):  # a parser fed a deeply nested document: the input's fault
        return ErrorReport(400, BadInput.type, "input is nested too deeply", BadInput.exit_code, False)
    message = str(exc) if isinstance(exc, Internal) else f"internal error ({type(exc).__name__})"
    return ErrorReport(500, Internal.type, message, Internal.exit_code, True)
