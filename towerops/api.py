"""The API's composition root: one NinjaAPI for v1, every app's router mounted here, and
one error envelope ({"detail": ...}) for everything that can go wrong."""
import logging

from django.core.exceptions import RequestDataTooBig
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from models_registry.api.routes import router as registry_router
from models_registry.api.parsing import BodyRejected, StrictJsonParser
from models_registry.errors import DomainError, TooManyRequests, UnknownChoice
from models_registry.transactions import is_conflict

log = logging.getLogger(__name__)

class TowerOpsApi(NinjaAPI):
    def get_openapi_operation_id(self, operation) -> str:
        # Stable ids whatever module a route lives in: generated clients keep working when code moves.
        return f"models_registry_api_{operation.view_func.__name__}"

    def get_openapi_schema(self, *args, **kwargs):
        # The catalog's task types are data, not code: the schema lists the ones defined now, so a
        # schema-driven client (or a fuzzer) can produce accepted selections. GET /task-types too.
        schema = super().get_openapi_schema(*args, **kwargs)
        from models_registry.api.schemas import add_catalog_enums

        add_catalog_enums(schema)
        return schema


api = TowerOpsApi(title="TowerOps", version="1", urls_namespace="api-v1", docs_url="/docs",
                  parser=StrictJsonParser())
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
    response = api.create_response(request, {"detail": str(exc)}, status=exc.status)
    if isinstance(exc, TooManyRequests):
        response["Retry-After"] = str(exc.retry_after_s)
    return response


@api.exception_handler(HttpError)
def http_error(request, exc: HttpError):
    # ninja wraps a body the parser refused in a bare 400: answer with the parser's own status and words.
    cause = exc.__cause__
    if isinstance(cause, BodyRejected):
        return api.create_response(request, {"detail": cause.detail}, status=cause.status)
    return api.create_response(request, {"detail": str(exc)}, status=exc.status_code)


@api.exception_handler(RequestDataTooBig)
def too_big(request, exc):
    return api.create_response(request, {"detail": "request body too large"}, status=413)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def database_unavailable(request, exc):
    if is_conflict(exc):
        # A deadlock or serialization failure that outlived its retries (transactions.py): the
        # database is up; this request lost to concurrent ones and changed nothing.
        log.warning("transaction conflict after retries: %s", exc)
        return api.create_response(
            request, {"detail": "conflicted with concurrent changes and was not applied, retry"}, status=409)
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
