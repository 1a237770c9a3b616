"""One error type carrying an HTTP status and a stable code; the middleware renders it.

If an error makes no sense to a client (a bug, a database outage), it is not a client error:
it becomes a 500 or 503 that reveals nothing, and the details go to the log with the request id.
"""

from __future__ import annotations


class CallrecError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(CallrecError):
    status = 400
    code = "bad_request"


class Unauthorized(CallrecError):
    status = 401
    code = "unauthorized"


class Forbidden(CallrecError):
    status = 403
    code = "forbidden"


class NotFound(CallrecError):
    status = 404
    code = "not_found"


class Conflict(CallrecError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CallrecError):
    status = 413
    code = "payload_too_large"


class RangeNotSatisfiable(CallrecError):
    status = 416
    code = "range_not_satisfiable"


class ServiceUnavailable(CallrecError):
    status = 503
    code = "unavailable"
