"""The API's composition root: one NinjaAPI for v1, every app's router mounted here, and
one error envelope ({"detail": ...}) for everything that can go wrong."""
import logging

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, OperationalError
from ninja import NinjaAPI
from ninja.errors import ValidationError

from models_registry.api import router as registry_router
from models_registry.services import DomainError, UnknownChoice

log = logging.getLogger(__name__)

api = NinjaAPI(title="TowerOps", version="1", urls_namespace="api-v1", docs_url="/docs")
api.add_router("/", registry_router)


@api.exception_handler(UnknownChoice)
def unknown_choice(request, exc: UnknownChoice):
    return api.create_response(
        request,
        {
            "detail": [
                {
                    "loc": ["body", exc.field],
                    "msg": f"unknown {exc.field} {exc.value!r}",
                    "allowed": exc.allowed,
                }
            ]
        },
        status=422,
    )


@api.exception_handler(DomainError)
def domain_error(request, exc: DomainError):
    return api.create_response(request, {"detail": str(exc)}, status=exc.status)


@api.exception_handler(RequestDataTooBig)
def too_big(request, exc):
    return api.create_response(request, {"detail": "request body too large"}, status=413)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def database_unavailable(request, exc):
    # Django drops the broken connection at the end of the request; the next one reconnects.
    log.warning("database unavailable: %s", exc)
    return api.create_response(request, {"detail": "database unavailable, retry shortly"}, status=503)


@api.exception_handler(DataError)
def bad_data(request, exc):
    # A value PostgreSQL refuses (out of range, bad encoding) is the caller's error: retrying won't help.
    return api.create_response(request, {"detail": f"invalid value: {str(exc).splitlines()[0]}"}, status=422)


@api.exception_handler(IntegrityError)
def conflict(request, exc):
    return api.create_response(request, {"detail": "conflicts with the current state, retry"}, status=409)


@api.exception_handler(DatabaseError)
def database_error(request, exc):
    log.exception("database error")
    return api.create_response(request, {"detail": "database error"}, status=503)


@api.exception_handler(ValidationError)
def validation_error(request, exc: ValidationError):
    return api.create_response(request, {"detail": exc.errors}, status=422)
