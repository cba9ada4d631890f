"""API keys: `Authorization: Bearer <key>`, stored as SHA-256, with scopes select/read/admin."""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time

from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import HttpBearer

from models_registry.models import ApiKey

KEY_PREFIX = "tow_"
CACHE_TTL_S = 5.0  # a revoked key stops working within this many seconds
_cache: dict[str, tuple[float, int | None, frozenset[str]]] = {}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, scopes: list[str], created_by=None) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    unknown = sorted(set(scopes) - set(ApiKey.SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes: unknown {unknown or 'none given'}; allowed: {', '.join(ApiKey.SCOPES)}")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(
        name=name, prefix=plain[:10], hashed_key=hash_key(plain), scopes=sorted(set(scopes)), created_by=created_by
    )
    return row, plain


def _lookup(token: str) -> tuple[int | None, frozenset[str]]:
    digest = hash_key(token)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit and now - hit[0] < CACHE_TTL_S:
        return hit[1], hit[2]
    row = ApiKey.objects.filter(hashed_key=digest, revoked_at__isnull=True).values_list("pk", "scopes", "last_used_at").first()
    if row is None:
        _cache[digest] = (now, None, frozenset())
        return None, frozenset()
    pk, scopes, last_used = row
    stamp = dt.datetime.now(dt.timezone.utc)
    if last_used is None or stamp - last_used > dt.timedelta(minutes=1):
        ApiKey.objects.filter(pk=pk).update(last_used_at=stamp)  # at most once a minute per process
    _cache[digest] = (now, pk, frozenset(scopes))
    if len(_cache) > 10_000:
        _cache.clear()
    return pk, frozenset(scopes)


class ApiKeyAuth(HttpBearer):
    """Authenticates a key; each operation then asks for its scope with `require(request, scope)`."""

    def authenticate(self, request: HttpRequest, token: str):
        pk, scopes = _lookup(token)
        if pk is None:
            return None
        request.api_key_id = pk
        request.api_scopes = scopes
        return pk


def require(request: HttpRequest, scope: str) -> None:
    if scope not in getattr(request, "api_scopes", ()):
        raise HttpError(403, f"this API key lacks the {scope!r} scope")
