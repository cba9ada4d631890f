"""Every TOWEROPS_* setting, in one table: name, type, default, allowed values, meaning.

* ``towerops/settings.py`` fills ``django.conf.settings`` from the environment with
  ``from_env(name)``: the value, parsed, or the text as given when it does not parse or is
  out of range (so that the error below can quote it).
* Modules read a setting with ``value(name)`` when they need it: it reads ``django.conf.settings``
  at that moment (``override_settings`` and pytest-django's ``settings`` fixture work), parses
  strings the way the environment is parsed, and raises ``InvalidSetting`` for a bad value.
* A bad value stops startup with a message naming the variable and what is allowed: through
  Django's system checks (``towerops.E001``) for ``manage.py`` commands, and with
  ``InvalidSetting`` (an ``ImproperlyConfigured``) at app ready in every other process
  (gunicorn, celery, a script calling ``django.setup()``), which runs no checks.

README's configuration table is generated from ``SETTINGS`` (``readme_rows()``);
tests/test_conf.py fails when the two disagree.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from models_registry.catalog.durations import parse_duration

PROJECT_DIR = Path(__file__).resolve().parent.parent


class InvalidSetting(ImproperlyConfigured):
    """A TOWEROPS_* setting with a value outside what its table row allows."""


# ---------------------------------------------------------------------------------------- kinds
# Each kind turns a value (the environment's text, or what a settings override holds) into the
# value modules use, or raises ValueError saying what is wrong with it.


@dataclass(frozen=True)
class Duration:
    """A length of time: a bare number counts ``unit``; Go-style text ("90s", "10m", "1h30m") is read too."""

    unit: str = "s"  # "s" or "min": what a bare number counts, and what the value is in
    above: float | None = None  # exclusive lower bound
    at_least: float | None = None  # inclusive lower bound
    at_most_days: float = 365.0  # so that no value overflows a timedelta

    @property
    def type_name(self) -> str:
        return f"duration ({self.unit})"

    @property
    def form(self) -> str:
        return f"{'seconds' if self.unit == 's' else 'minutes'} (a bare number) or Go-style (90s, 10m, 1h30m)"

    @property
    def allowed(self) -> str:
        low = f"> {self.above:g}" if self.above is not None else f"≥ {self.at_least:g}"
        return f"{low}, ≤ {self.at_most_days:g} days"

    def clean(self, raw: Any) -> float:
        per_unit = 60.0 if self.unit == "min" else 1.0
        if isinstance(raw, str):
            try:
                amount = float(raw)  # a bare number counts the unit
            except ValueError:
                amount = parse_duration(raw) / per_unit
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            amount = float(raw)
        else:
            raise ValueError(f"not a duration ({type(raw).__name__})")
        if not math.isfinite(amount):
            raise ValueError("not a finite duration")
        if self.above is not None and amount <= self.above:
            raise ValueError(f"must be more than {self.above:g}")
        if self.at_least is not None and amount < self.at_least:
            raise ValueError(f"must be at least {self.at_least:g}")
        if amount * per_unit > self.at_most_days * 86400:
            raise ValueError(f"must be at most {self.at_most_days:g} days")
        return amount


@dataclass(frozen=True)
class Days:
    """A whole number of days."""

    type_name = "whole days"
    allowed = "0 to 36500"
    form = "a whole number of days"

    def clean(self, raw: Any) -> int:
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise ValueError("not a whole number") from None
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError(f"not a whole number ({type(raw).__name__})")
        if not 0 <= raw <= 36500:
            raise ValueError("must be between 0 and 36500")
        return raw


@dataclass(frozen=True)
class Addresses:
    """IP addresses or networks, comma-separated in the environment; empty: none."""

    type_name = "addresses"
    allowed = "IPv4/IPv6 addresses or networks; empty: none"
    form = "comma-separated, e.g. 127.0.0.1,::1,10.0.0.0/8"

    def clean(self, raw: Any) -> list[str]:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"not a list of addresses ({type(raw).__name__})")
        out = []
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or network") from None
            out.append(text)
        return out


@dataclass(frozen=True)
class PolicyKnobs:
    """A JSON object overriding fields of the policy's PolicyParams."""

    type_name = "JSON object"
    form = 'a JSON object, e.g. {"queue_slot_s": 2}'

    @property
    def allowed(self) -> str:
        return "keys among " + ", ".join(f"`{k}`" for k in _policy_fields()) + "; numbers ≥ 0"

    def clean(self, raw: Any) -> dict[str, float]:
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object ({type(raw).__name__})")
        known = _policy_fields()
        for key, val in raw.items():
            if key not in known:
                raise ValueError(f"unknown key {key!r}")
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
                raise ValueError(f"{key} must be a number ≥ 0, not {val!r}")
        return dict(raw)


def _policy_fields() -> tuple[str, ...]:
    # Imported when first needed: settings.py imports this module, and need not load the policy.
    from models_registry.policy.types import PolicyParams

    return tuple(f.name for f in fields(PolicyParams))


@dataclass(frozen=True)
class Directory:
    """A directory; a relative path is taken from the project directory."""

    type_name = "path"
    allowed = "a directory; relative: from the project directory"
    form = "a path"

    def clean(self, raw: Any) -> Path:
        if not isinstance(raw, (str, Path)) or not str(raw).strip():
            raise ValueError("not a path")
        return PROJECT_DIR / Path(raw).expanduser()  # an absolute path replaces PROJECT_DIR


@dataclass(frozen=True)
class Rate:
    """A rate limit as django-ratelimit writes it ("30/m": 30 a minute; s, m, h or d); empty: none."""

    type_name = "rate"
    allowed = "N/s, N/m, N/h or N/d with N ≥ 1; empty: no limit"
    form = "count/period, e.g. 6000/m"

    def clean(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"not a rate ({type(raw).__name__})")
        text = raw.strip()
        if not text:
            return ""
        count, _, period = text.partition("/")
        if not count.isdigit() or int(count) < 1 or period not in ("s", "m", "h", "d"):
            raise ValueError("not a rate like 30/m")
        return text


@dataclass(frozen=True)
class RedisUrl:
    """A Redis URL (redis://, rediss:// or unix://); empty: derived (see the setting)."""

    type_name = "URL"
    allowed = "redis://, rediss:// or unix:// URL; empty: derived"
    form = "a URL, e.g. redis://127.0.0.1:6379/2"

    def clean(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"not a URL ({type(raw).__name__})")
        text = raw.strip()
        if text and not text.startswith(("redis://", "rediss://", "unix://", "redis+socket://")):
            raise ValueError("not a redis://, rediss:// or unix:// URL")
        return text


@dataclass(frozen=True)
class Bind:
    """HOST:PORT to listen on."""

    type_name = "address"
    allowed = "HOST:PORT, port 1 to 65535"
    form = "e.g. 127.0.0.1:11500 or [::1]:11500"

    def clean(self, raw: Any) -> str:
        text = str(raw).strip()
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("not HOST:PORT")
        return text


@dataclass(frozen=True)
class Count:
    """A whole number within bounds."""

    low: int = 1
    high: int = 256
    type_name = "count"
    form = "a whole number"

    @property
    def allowed(self) -> str:
        return f"{self.low} to {self.high}"

    def clean(self, raw: Any) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError("not a whole number") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}")
        return value


@dataclass(frozen=True)
class Text:
    """A short text."""

    max_length: int = 100
    type_name = "text"
    form = "text"

    @property
    def allowed(self) -> str:
        return f"at most {self.max_length} characters"

    def clean(self, raw: Any) -> str:
        text = str(raw)
        if len(text) > self.max_length:
            raise ValueError(f"longer than {self.max_length} characters")
        return text


@dataclass(frozen=True)
class Choice:
    """One of a few words."""

    choices: tuple[str, ...]
    type_name = "choice"
    form = "one word"

    @property
    def allowed(self) -> str:
        return " | ".join(self.choices)

    def clean(self, raw: Any) -> str:
        word = str(raw).strip().lower()
        if word not in self.choices:
            raise ValueError("not one of the choices")
        return word


@dataclass(frozen=True)
class Number:
    """A decimal number within bounds."""

    low: float
    high: float
    type_name = "number"
    form = "a number"

    @property
    def allowed(self) -> str:
        return f"{self.low:g} to {self.high:g}"

    def clean(self, raw: Any) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ValueError("not a number") from None
        if not (self.low <= value <= self.high):  # also refuses nan
            raise ValueError(f"must be between {self.low:g} and {self.high:g}")
        return value


# ---------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Duration | Days | Addresses | PolicyKnobs | Directory | Rate | RedisUrl | Bind | Count | Text | Choice | Number
    default: str  # as written in the environment
    meaning: str

    def problem(self, raw: Any) -> str | None:
        try:
            self.kind.clean(raw)
        except ValueError as exc:
            return self.message(raw, exc)
        return None

    def message(self, raw: Any, exc: ValueError) -> str:
        return f"{self.name}={raw!r}: {exc}; allowed: {self.kind.allowed}, written as {self.kind.form}"


_TABLE = (
    Setting("TOWEROPS_SYNC_INTERVAL_S", Duration(above=0), "10",
            "how often each endpoint's `/api/ps` is reconciled with the database (beat)"),
    Setting("TOWEROPS_TELEMETRY_INTERVAL_S", Duration(above=0), "15",
            "how often each GPU's VRAM is recorded (beat)"),
    Setting("TOWEROPS_LOAD_TIMEOUT_S", Duration(above=0), "600",
            "a load still `loading` after this is failed and its VRAM released"),
    Setting("TOWEROPS_REQUESTED_TIMEOUT_S", Duration(above=0), "120",
            "a load still `requested` (no agent took it) this long after its task reached the broker is failed"),
    Setting("TOWEROPS_OUTBOX_MAX_AGE_S", Duration(above=0), "900",
            "a load whose task could not reach the broker (broker down) is sent when it is back, or failed after this"),
    Setting("TOWEROPS_PRELOAD_IDLE_MIN", Duration(unit="min", at_least=0), "5",
            "a preloaded model outside its window is unloaded once unused this long"),
    Setting("TOWEROPS_CONFIG_TTL_S", Duration(at_least=0), "2",
            "each process caches the catalog this long: edits made elsewhere show within it"),
    Setting("TOWEROPS_SNAPSHOT_FRESH_S", Duration(above=0), "60",
            "selection trusts a GPU's measured free VRAM only from a snapshot newer than this"),
    Setting("TOWEROPS_SNAPSHOT_RAW_DAYS", Days(), "2",
            "keep every GPU snapshot this long, then one per GPU per 5 min"),
    Setting("TOWEROPS_DECISION_RAW_DAYS", Days(), "30",
            "keep raw decisions this long, then only once their hour is rolled up (`0`: for ever)"),
    Setting("TOWEROPS_METRICS_ALLOW_IPS", Addresses(), "127.0.0.1,::1",
            "who may scrape `/metrics` without an API key"),
    Setting("TOWEROPS_API_RATE", Rate(), "6000/m",
            "API calls per client address, all together; over it: 429 with Retry-After"),
    Setting("TOWEROPS_API_FAILED_KEY_RATE", Rate(), "30/m",
            "API calls with a missing or wrong key per client address; over it: 429 for every call from there"),
    Setting("TOWEROPS_CACHE_URL", RedisUrl(), "",
            "the cache the rate limits count in, shared by every web process; empty: the broker's Redis, "
            "database 2 (per-process memory with a RabbitMQ broker)"),
    Setting("TOWEROPS_ADVISORY_GRACE_S", Duration(at_least=0), "30",
            "a `POST /select` reservation no outcome or gateway request uses is forgotten this long after its "
            "expected response"),
    Setting("TOWEROPS_HEARTBEAT_INTERVAL_S", Duration(above=0), "30",
            "beat's heartbeat period; `/readyz` fails when the last is older than three"),
    Setting("TOWEROPS_GATEWAY_BIND", Bind(), "127.0.0.1:11500",
            "where the gateway (Ollama's and OpenAI's APIs) listens"),
    Setting("TOWEROPS_GATEWAY_WORKERS", Count(1, 64), "1",
            "gateway processes (`manage.py rungateway`)"),
    Setting("TOWEROPS_GATEWAY_DB_THREADS", Count(1, 256), "8",
            "threads each gateway process gives to database work"),
    Setting("TOWEROPS_GATEWAY_REDIS_URL", RedisUrl(), "",
            "the Redis that gateway processes share admission through; empty: the broker's, when it is Redis"),
    Setting("TOWEROPS_GATEWAY_REDIS_PREFIX", Text(64), "towerops:gw:",
            "the gateway's key prefix in that Redis"),
    Setting("TOWEROPS_GATEWAY_OPEN_NETWORKS", Addresses(), "",
            "networks that may use the gateway without an API key (empty: keys only)"),
    Setting("TOWEROPS_POLICY", PolicyKnobs(), "{}",
            "overrides of the policy's knobs (`PolicyParams`), e.g. `{\"queue_slot_s\": 2}`"),
    Setting("TOWEROPS_LEARNING_MODE", Choice(("shadow", "active")), "shadow",
            "`shadow`: observed quality is shown beside the admin's scores and proposed as edits; `active`: "
            "the policy uses it, exploring among loaded models (docs/learning.md)"),
    Setting("TOWEROPS_LEARNING_PRIOR_STRENGTH", Number(1, 10000), "20",
            "how many observed answers the admin's quality score is worth (the Beta prior's weight)"),
    Setting("TOWEROPS_LEARNING_EXPLORE_REGRET", Number(0, 0.2), "0.02",
            "active mode: the most quality an exploring choice may give up, per request (0: never explore)"),
    Setting("TOWEROPS_PRELOAD_SUGGEST", Choice(("off", "suggest", "auto")), "suggest",
            "preload windows predicted from demand: `suggest` shows them to accept, `auto` applies them weekly"),
    Setting("TOWEROPS_VAR_DIR", Directory(), "var",
            "where the private PostgreSQL and Redis, the secret key and the admin password live"),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}


def from_env(name: str, environ: Mapping[str, str] | None = None, *, needed_now: bool = False) -> Any:
    """For towerops/settings.py: the environment's value (or the default), parsed; the text
    as given when it is not allowed, so that the check can name it. ``needed_now``: raise
    InvalidSetting instead, for a value settings.py itself cannot do without."""
    setting = SETTINGS[name]
    text = (os.environ if environ is None else environ).get(name, setting.default)
    try:
        return setting.kind.clean(text)
    except ValueError as exc:
        if needed_now:
            raise InvalidSetting(setting.message(text, exc)) from None
        return text


_MISSING = object()
_cleaned: dict[str, tuple[Any, Any]] = {}  # name -> (the settings value, its cleaned value)


def value(name: str) -> Any:
    """The setting's current value, read from django.conf.settings now (the table's default
    when settings lack it). Raises InvalidSetting naming the variable for a bad value."""
    setting = SETTINGS[name]
    raw = getattr(settings, name, _MISSING)
    if raw is _MISSING:
        raw = setting.default
    hit = _cleaned.get(name)
    if hit is not None and hit[0] is raw:
        return hit[1]
    try:
        clean = setting.kind.clean(raw)
    except ValueError as exc:
        raise InvalidSetting(setting.message(raw, exc)) from None
    if isinstance(raw, (str, int, float)):  # immutable: the same object always cleans the same
        _cleaned[name] = (raw, clean)
    return clean


def problems() -> list[str]:
    """One message per TOWEROPS_* setting whose current value is not allowed."""
    out = []
    for setting in _TABLE:
        raw = getattr(settings, setting.name, _MISSING)
        problem = None if raw is _MISSING else setting.problem(raw)
        if problem:
            out.append(problem)
    return out


def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Django system check: every TOWEROPS_* setting within what it allows."""
    return [checks.Error(msg, hint="see the configuration table in README.md", id="towerops.E001")
            for msg in problems()]


# Whether this process reports bad settings through the system checks (manage.py: its commands
# run them) instead of refusing at app ready. Set in-process only, so processes it starts
# (runstack's gunicorn and celery) still refuse on their own.
_report_through_checks = False


def report_through_system_checks() -> None:
    global _report_through_checks
    _report_through_checks = True


def refuse_bad_settings() -> None:
    """At app ready: raise InvalidSetting listing every bad setting, unless this process is
    manage.py, whose commands report them through the system checks."""
    found = problems()
    if found and not _report_through_checks:
        raise InvalidSetting("bad TowerOps settings:\n" + "\n".join(f"  {msg}" for msg in found))


def readme_rows() -> list[str]:
    """README's configuration table, generated: one row per setting."""
    return [f"| `{s.name}` | {s.kind.type_name} | `{s.default}` | {s.kind.allowed} | {s.meaning} |" for s in _TABLE]
