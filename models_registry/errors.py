"""The domain errors the services raise; towerops/api.py maps each to its HTTP status and JSON shape."""
from __future__ import annotations


class UnknownChoice(ValueError):
    """A request names a task type or urgency that does not exist."""

    def __init__(self, field: str, value: str, allowed: list[str]):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")


class DomainError(Exception):
    status = 409


class NotFound(DomainError):
    status = 404


class BadInput(DomainError):
    status = 422


class NoRoom(DomainError):
    status = 409


class TooManyRequests(DomainError):
    """A caller over its rate limit; `retry_after_s` says when to try again."""

    status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HourSealed(DomainError):
    """An outcome for a decision whose hour's raw decisions were pruned: the hour's figures are final."""

    status = 409
