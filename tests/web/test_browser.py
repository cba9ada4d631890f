"""The console in a real browser: Playwright for Python driving Debian's Chromium against a live server.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Playwright's own
browser downloads are never used. Screenshots of each page go to test-artifacts/.
"""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                       reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
    # serialized_rollback: the flush after each test would otherwise drop the data migrations' rows (SLO targets).
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture(scope="module")
def live_server(django_db_setup, django_db_blocker):
    """This module's own live server, started with plain-HTTP settings: the middleware reads
    SECURE_SSL_REDIRECT when the server starts, before any per-test `settings` change."""
    from django.test.utils import override_settings
    from pytest_django.live_server_helper import LiveServer

    with django_db_blocker.unblock(), override_settings(
        SECURE_SSL_REDIRECT=False, SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False, SECURE_HSTS_SECONDS=0
    ):
        server = LiveServer("localhost")
        yield server
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server, tower, alice):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.goto("/")
    assert "/login/" in pg.url
    pg.fill("input[name=username]", "alice")
    pg.fill("input[name=password]", "alice-password")
    pg.click("button[type=submit]")
    pg.wait_for_url(f"{live_server.url}/")
    yield pg
    context.close()


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_dashboard_shows_the_towers_gpus(page):
    from models_registry import models as m

    for gpu in m.Gpu.objects.all():
        assert page.locator(f'[data-gpu="{gpu.key}"]').is_visible()
        assert gpu.name in page.inner_text(f'[data-gpu="{gpu.key}"]')
    shot(page, "dashboard")
    # The HTMX poll replaces the fragment without breaking it.
    with page.expect_response(lambda r: r.url.rstrip("/") == page.url.rstrip("/") and r.request.headers.get("hx-request")):
        pass
    page.wait_for_selector("#live .gpu")


def test_editing_a_quality_score_persists_and_shows_in_the_history(page):
    from models_registry import models as m

    page.click("text=Catalog")
    score = m.QualityScore.objects.get(model__tag="mistral:7b", task_type__name="analysis")
    cell = f"#cell-{score.model_id}-{score.task_type_id}"
    page.fill(f"{cell} input[name=score]", "1.7")
    page.press(f"{cell} input[name=score]", "Enter")
    page.wait_for_selector(f"{cell} .error")
    assert "between 0 and 1" in page.inner_text(cell)
    page.fill(f"{cell} input[name=score]", "0.93")
    page.press(f"{cell} input[name=score]", "Enter")
    try:
        page.wait_for_selector("#history >> text=0.86 → 0.93")
    finally:
        shot(page, "catalog")
    assert "alice" in page.inner_text("#history")
    shot(page, "catalog")
    score.refresh_from_db()
    assert score.score == 0.93
    page.reload()
    assert page.input_value(f"{cell} input[name=score]") == "0.93"


def test_a_decision_opens_to_show_its_candidates(page):
    from tests.web.conftest import make_decision

    d = make_decision("code_generation", "interactive")
    page.click("text=Decisions")
    page.click(f"a[href='/decisions/{d.pk}/']")
    page.wait_for_selector("#candidates")
    rows = page.locator("#candidates tbody tr")
    assert rows.count() == len(d.candidates)
    assert page.locator("#candidates tr.chosen").count() == 1
    shot(page, "decision_detail")
    page.goto("/decisions/")
    shot(page, "decisions")


def test_the_other_pages_render(page):
    page.goto("/load-events/")
    page.wait_for_selector("#table")
    shot(page, "load_events")
    page.goto("/slo/")
    page.wait_for_selector("#chart-interactive_p95_s .uplot")
    shot(page, "slo")


def test_creating_a_preload_window_previews_the_fit_and_saves_it(page):
    from models_registry import models as m

    page.click("text=Preload")
    page.wait_for_selector("table.week")
    page.click("text=new window")
    page.fill("input[name=name]", "morning standup")
    page.check("#field-models label:has-text('llama3.2:3b') input")
    # Pick the hours on the week: Tuesday 06:00, then 07:00 -> 06:00–08:00, Tuesday ticked, previewed.
    page.click("#preview td.slot[data-day='1'][data-hour='6']")
    page.click("#preview td.slot[data-day='1'][data-hour='7']")
    assert page.input_value("input[name=start_time]") == "06:00"
    assert page.input_value("input[name=end_time]") == "08:00"
    assert page.is_checked("#field-days_of_week label:has-text('Tue') input")
    page.wait_for_selector("#preview td.slot.edited[data-day='1'][data-hour='7']")
    assert page.locator("#preview td.slot.edited").count() == 2
    # Or type them: Monday and Wednesday 08:00–09:30.
    page.uncheck("#field-days_of_week label:has-text('Tue') input")
    for day in ("Mon", "Wed"):
        page.check(f"#field-days_of_week label:has-text('{day}') input")
    page.fill("input[name=start_time]", "08:00")
    page.fill("input[name=end_time]", "09:30")
    page.wait_for_selector("#preview td.slot.edited[data-day='2'][data-hour='9']")
    # A 32B model: the live preview (HTMX on change) says it can never fit, before any save.
    page.check("#field-models label:has-text('qwen2.5-coder:32b') input")
    page.wait_for_selector("#never-fits")
    shot(page, "preload_refused")
    page.click("button[name=save]")
    page.wait_for_selector("#field-models .error")
    assert "can never be warm together" in page.inner_text("#field-models")
    assert not m.PreloadWindow.objects.filter(name="morning standup").exists()
    page.uncheck("#field-models label:has-text('qwen2.5-coder:32b') input")
    page.wait_for_selector("#fits")
    assert "llama3.2:3b" in page.inner_text("#warm-set")
    shot(page, "preload_form")
    page.click("button[name=save]")
    page.wait_for_selector("#windows >> text=morning standup")
    w = m.PreloadWindow.objects.get(name="morning standup")
    assert w.days_of_week == [0, 2] and [mo.tag for mo in w.models.all()] == ["llama3.2:3b"]
    assert (w.start_time.isoformat(), w.end_time.isoformat()) == ("08:00:00", "09:30:00")
    assert "Mon, Wed" in page.inner_text("#windows")
    shot(page, "preload")


def test_vram_history_draws_a_chart(page):
    import datetime as dt

    from django.utils import timezone

    from models_registry import models as m

    gpu = m.Gpu.objects.select_related("host").get(index=0)
    now = timezone.now()
    for i in range(30):
        m.GpuSnapshot.objects.create(gpu=gpu, taken_at=now - dt.timedelta(minutes=i), total_mib=gpu.total_mib,
                                     used_mib=2000 + 100 * (i % 7), free_mib=gpu.total_mib - 2000)
    page.click("text=VRAM")
    page.wait_for_selector("#vram-chart .uplot")
    page.click("#vram nav[aria-label=window] >> text=24h")
    page.wait_for_url(lambda url: url.endswith("window=24h"))
    page.wait_for_selector("#vram nav[aria-label=window] a.active >> text=24h")
    page.wait_for_selector("#vram-chart .uplot")
    shot(page, "vram")
