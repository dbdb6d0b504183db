"""Domain errors: what a caller did wrong or can act on. Raised below api/, mapped to HTTP in app/api/errors.py."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a caller caused or can act on; `param` names the field at fault, where there is one."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(ServiceError):
    """The request cannot be served as asked (a value out of bounds, a text too short...)."""


class NotFound(ServiceError):
    """No model, job or corpus of that name."""


class Conflict(ServiceError):
    """The request clashes with the current state (a job running, a name taken, a model in use)."""


class TooLarge(ServiceError):
    """A body or text over its limit."""


class UnsupportedMediaType(ServiceError):
    """A body of a type this route does not take."""


class Unauthorized(ServiceError):
    """No key, or the wrong one, for a route that needs one."""


class Overloaded(ServiceError):
    """Too much work is waiting: try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(ServiceError):
    """Not serving yet (the model loads) or any more (shutting down): try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after
