"""API keys: `Authorization: Bearer <key>`, stored as SHA-256, with scopes select/read/admin."""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import time

from django.http import HttpRequest
from django_ratelimit.core import get_usage, is_ratelimited
from ninja.errors import HttpError
from ninja.security import HttpBearer

from models_registry import conf
from models_registry.errors import TooManyRequests
from models_registry.models import ApiKey

log = logging.getLogger(__name__)

KEY_PREFIX = "tow_"
CACHE_TTL_S = 5.0  # a revoked key stops working within this many seconds
_cache: dict[str, tuple[float, int | None, frozenset[str]]] = {}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_secret(row: ApiKey) -> str:
    """Gives an unsaved key row a new secret: its prefix and hash are set, the secret is returned
    (to show once; it is never stored)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row.prefix, row.hashed_key = plain[:10], hash_key(plain)
    return plain


def create_key(name: str, scopes: list[str], created_by=None) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    unknown = sorted(set(scopes) - set(ApiKey.SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes: unknown {unknown or 'none given'}; allowed: {', '.join(ApiKey.SCOPES)}")
    row = ApiKey(name=name, scopes=sorted(set(scopes)), created_by=created_by)
    plain = issue_secret(row)
    row.save()
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


# Per client address, in the shared cache (Redis), so every web process counts together: all API
# calls (TOWEROPS_API_RATE), and failed keys much more strictly (TOWEROPS_API_FAILED_KEY_RATE), so
# guessing keys is slow.


# When that cache is unreachable (it is the broker's Redis by default), the limits are not
# enforced for the outage: an API that refuses every call because its rate counter is down
# would turn a Redis outage into a TowerOps outage. Logged at most once a minute per process.
_cache_down_logged_at = 0.0


def _cache_down(exc: Exception) -> None:
    global _cache_down_logged_at
    if time.monotonic() - _cache_down_logged_at > 60:
        _cache_down_logged_at = time.monotonic()
        log.warning("API rate limits not enforced: their cache is unreachable (%s: %s)", type(exc).__name__, exc)


def _limited(request: HttpRequest, group: str, rate: str, increment: bool) -> bool:
    return is_ratelimited(request, group=group, key="ip", rate=rate, increment=increment)


def check_rate(request: HttpRequest) -> None:
    """Raise TooManyRequests when this address is over the API rate or has failed keys too often."""
    try:
        _check_rate(request)
    except TooManyRequests:
        raise
    except Exception as exc:  # noqa: BLE001 - redis-py's and the cache backend's errors alike: fail open
        _cache_down(exc)


def _check_rate(request: HttpRequest) -> None:
    failed_rate = conf.value("TOWEROPS_API_FAILED_KEY_RATE")
    failed = failed_rate and get_usage(request, group="api-auth-failed", key="ip", rate=failed_rate, increment=False)
    if failed and failed["count"] >= failed["limit"]:
        raise TooManyRequests("too many requests with an invalid API key from this address; retry in a minute", 60)
    rate = conf.value("TOWEROPS_API_RATE")
    if rate and _limited(request, "api", rate, increment=True):
        raise TooManyRequests(f"over the API rate limit of {rate} per address; retry shortly", 60)


class ApiKeyAuth(HttpBearer):
    """Authenticates a key; each operation then asks for its scope with `require(request, scope)`."""

    def __call__(self, request: HttpRequest):
        check_rate(request)
        result = super().__call__(request)
        failed_rate = conf.value("TOWEROPS_API_FAILED_KEY_RATE")
        if result is None and failed_rate:  # no key, or a wrong one: a 401 follows
            try:
                _limited(request, "api-auth-failed", failed_rate, increment=True)
            except Exception as exc:  # noqa: BLE001 - fail open, as check_rate
                _cache_down(exc)
        return result

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
