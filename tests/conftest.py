from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOWER_PROFILE = ROOT / "profiles" / "tower.yaml"


@pytest.fixture
def tower(db):
    """The seed's Tower, imported into the test database."""
    from models_registry.profile import load_profile_file
    from models_registry.services import import_profile

    import_profile(load_profile_file(TOWER_PROFILE))


@pytest.fixture
def alice(db, django_user_model):
    """A staff member who edits the catalog."""
    return django_user_model.objects.create_user("alice", password="alice-password", is_staff=True)


@pytest.fixture
def bob(db, django_user_model):
    """A viewer: logged in, not staff."""
    return django_user_model.objects.create_user("bob", password="bob-password")


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # The test client speaks plain HTTP; production settings would redirect it to HTTPS.
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    """Each test starts without the per-process caches a server keeps between requests:
    API key lookups (5 s), the catalog (2 s) and the current ConfigSnapshot id."""
    from models_registry import auth, services, state

    def clear():
        auth._cache.clear()
        state.invalidate_config()
        services._current_config.update(cfg=None, id=None)

    clear()
    yield
    clear()
