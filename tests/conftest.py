"""Fixtures every test package shares: the seed's Tower, users, API keys, clean caches.
Plain helpers (waiting, free ports, decisions) are in tests/helpers.py."""
from pathlib import Path

import pytest

# Not imported from tests.helpers: without pytest-django (`-p no:django`) the project root, and
# so the `tests` package, is not on sys.path when this file loads.
ROOT = Path(__file__).resolve().parent.parent
TOWER_PROFILE = ROOT / "profiles" / "tower.yaml"


@pytest.fixture
def tower(db):
    """The seed's Tower, imported into the test database."""
    from models_registry.catalog.importer import import_profile
    from models_registry.catalog.profile import load_profile_file

    import_profile(load_profile_file(TOWER_PROFILE))


@pytest.fixture
def alice(db, django_user_model):
    """A staff member who edits the catalog."""
    return django_user_model.objects.create_user("alice", password="alice-password", is_staff=True)


@pytest.fixture
def bob(db, django_user_model):
    """A viewer: logged in, not staff."""
    return django_user_model.objects.create_user("bob", password="bob-password")


@pytest.fixture
def make_key(db):
    """make_key("select", "read") -> the plain key with those scopes."""
    from models_registry.api.auth import create_key

    def make(*scopes: str, name: str = "test") -> str:
        return create_key(name, list(scopes))[1]

    return make


@pytest.fixture(autouse=True)
def _private_cache(settings):
    """Rate-limit counters per test, in this process: tests never share (or wait out) a limit."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # The test client speaks plain HTTP; production settings would redirect it to HTTPS.
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    """Each test starts without the per-process caches a server keeps between requests:
    API key lookups (5 s), the catalog (2 s) and the current ConfigSnapshot id."""
    from models_registry.api import auth
    from models_registry.selection import records
    from models_registry.selection import world as state

    def clear():
        auth._cache.clear()
        state.invalidate_config()
        records._current_config.update(cfg=None, id=None)

    clear()
    yield
    clear()


@pytest.fixture
def slo_targets(transactional_db):
    """The rows the data migration seeds (the five SLO targets), for tests that run after a
    transactional test's flush removed them. Re-runs the migration's own function, which is
    idempotent. (serialized_rollback is not used: after another transactional test's flush
    re-created the content types under new ids, restoring the serialized ones collides.)"""
    import importlib

    from django.apps import apps

    importlib.import_module("models_registry.migrations.0002_slo").seed_targets(apps, None)
