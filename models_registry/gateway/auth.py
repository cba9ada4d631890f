"""Who is calling the gateway: a TowerOps API key with the `infer` scope (``Authorization: Bearer``;
the `openai` client sends its api_key that way), or anyone on a network the operator opened
(``TOWEROPS_GATEWAY_OPEN_NETWORKS``, empty by default)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from models_registry.api.auth import hash_key
from models_registry.models import ApiKey

CACHE_TTL_S = 5.0  # as the API's: a revoked key stops working within this many seconds
_cache: dict[str, tuple[float, "Principal | None"]] = {}


@dataclass(frozen=True)
class Principal:
    key_id: int | None
    scopes: frozenset[str]
    name: str
    default_task: str = ""
    default_urgency: str = ""


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


MISS = object()


def cached(token: str):
    """The cached answer for ``token`` (no database: safe on the event loop), or MISS."""
    hit = _cache.get(hash_key(token))
    if hit and time.monotonic() - hit[0] < CACHE_TTL_S:
        return hit[1]
    return MISS


def lookup(token: str) -> Principal | None:
    digest = hash_key(token)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit and now - hit[0] < CACHE_TTL_S:
        return hit[1]
    row = (ApiKey.objects.filter(hashed_key=digest, revoked_at__isnull=True)
           .values_list("pk", "scopes", "name", "default_task", "default_urgency").first())
    found = None if row is None else Principal(row[0], frozenset(row[1]), row[2], row[3], row[4])
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[digest] = (now, found)
    return found
