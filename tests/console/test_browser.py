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
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("slo_targets"),
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


def test_accepting_an_observed_quality_proposal_updates_the_score(page):
    from django.utils import timezone

    from models_registry import models as m
    from models_registry.learning import signals

    model, task = m.LlmModel.objects.get(tag="llama3.2:3b"), m.TaskType.objects.get(name="chat")
    m.QualitySignal.objects.bulk_create(
        m.QualitySignal(model=model, task_type=task, kind="rating", value=1.0 if i < 15 else 0.0, weight=1.0,
                        created_at=timezone.now()) for i in range(30))
    signals.recount(timezone.now())
    page.click("text=Catalog")
    row = f"#observed-{model.pk}-{task.pk}"
    assert "0.636" in page.inner_text(row)
    page.click(f"{row} button:has-text('Accept')")
    try:
        page.wait_for_selector("#observed >> text=0.84 → 0.64 (accepted from observed quality)")
        page.wait_for_selector("#history >> text=0.84 → 0.64")
    finally:
        shot(page, "catalog-observed")
    cell = f"#cell-{model.pk}-{task.pk}"
    assert page.input_value(f"{cell} input[name=score]") == "0.64"  # the grid, swapped out of band
    assert m.QualityScore.objects.get(model=model, task_type=task).score == 0.64
    assert page.locator(f"{row} button").count() == 0  # nothing more to accept


def test_a_decision_opens_to_show_its_candidates(page):
    from tests.helpers import make_decision

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
    _slo_history()
    page.goto("/slo/")
    page.wait_for_selector("#chart-interactive_p95_s .uplot")
    card = page.inner_text("#metric-interactive_p95_s")
    assert "Interactive time to first token, p95" in card and "target: under 5 s" in card
    assert "interactive_p95_s" not in page.inner_text("#slo") and "fraction" not in page.inner_text("#slo")
    assert "each hour's value" in page.inner_text("#metric-fallback_rate .chart-legend")  # no hovering needed
    shot(page, "slo")
    # it refreshes by itself, like the dashboard
    with page.expect_response(lambda r: "/slo/" in r.url and r.request.headers.get("hx-request"), timeout=70_000):
        pass
    page.wait_for_selector("#chart-interactive_p95_s .uplot")


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


def test_charts_draw_times_in_the_console_zone(page, settings):
    settings.TIME_ZONE = "Asia/Kolkata"
    page.click("text=SLOs")
    page.wait_for_selector("#chart-interactive_p95_s .uplot")
    assert page.inner_text("#zone") == "times in Asia/Kolkata"
    # The legend names the hour under the cursor: hours start at :30 in Kolkata (UTC+05:30).
    page.hover("#chart-interactive_p95_s .u-over")
    hour = page.inner_text("#chart-interactive_p95_s .u-legend .u-series:first-child .u-value")
    assert ":30" in hour, hour
    settings.TIME_ZONE = "UTC"
    page.reload()
    page.wait_for_selector("#chart-interactive_p95_s .uplot")
    page.hover("#chart-interactive_p95_s .u-over")
    hour = page.inner_text("#chart-interactive_p95_s .u-legend .u-series:first-child .u-value")
    assert ":00" in hour, hour


# --------------------------------------------------------------------------- a phone, 390 px wide

PHONE = {"width": 390, "height": 844}


def _luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg, bg) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (0..255 triples)."""
    hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# The text colour of an element and the first opaque background behind it (walking up the tree;
# backgrounds drawn elsewhere, e.g. an overflowing child over its parent's sibling, are not seen:
# the no-horizontal-scroll check covers that case).
COLOURS_JS = """el => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  let bg = null;
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] > 0) { bg = c.slice(0, 3); break; }
  }
  return {fg: rgb(getComputedStyle(el).color).slice(0, 3), bg: bg || [255, 255, 255]};
}"""


@pytest.fixture
def phone(browser, live_server, tower, alice):
    # Not is_mobile: Chromium's mobile emulation zooms out to fit a page that is too wide, making
    # innerWidth as wide as the page; a plain 390 px viewport shows the overflow as it is.
    context = browser.new_context(base_url=live_server.url, viewport=PHONE)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    pg.goto("/login/")
    _assert_fits(pg, "login")
    pg.fill("input[name=username]", "alice")
    pg.fill("input[name=password]", "alice-password")
    pg.click("button[type=submit]")
    pg.wait_for_url(f"{live_server.url}/")
    yield pg
    context.close()


def _page_width(page, name) -> int:
    """The page's scroll width at the phone's inner width (a screenshot goes to test-artifacts/)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"phone_{name}.png"), full_page=True)
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == PHONE["width"]
    return scroll


def _assert_fits(page, name):
    width = _page_width(page, name)
    assert width <= PHONE["width"], f"{name}: the page scrolls sideways on a 390 px phone ({width} px wide)"


def _slo_history():
    """Ten hours of decisions with outcomes and a few loads, and the seed's SLO targets (a
    flushed test database may have lost the data migration's rows)."""
    import datetime as dt

    from django.utils import timezone

    from models_registry import models as m
    from models_registry.slo import metrics
    from tests.console.conftest import make_decision

    for name, (comparator, value) in metrics.DEFAULT_TARGETS.items():
        m.SloTarget.objects.get_or_create(name=name, defaults={"comparator": comparator, "target": value})
    now = timezone.now()
    model, endpoint = m.LlmModel.objects.get(tag="llama3.2:3b"), m.Endpoint.objects.get(name="tower-nvidia")
    for h in range(10):
        for i in range(3):
            d = make_decision("chat", "interactive", now - dt.timedelta(hours=h, minutes=10 * i))
            m.DecisionOutcome.objects.create(decision=d, reported_at=d.created_at, response_ms=4000 + 1500 * h,
                                             first_token_ms=300 + 600 * h * i, success=True, rating=0.8)
        m.LoadEvent.objects.create(model=model, endpoint=endpoint, kind="load", trigger="selection",
                                   requested_at=now - dt.timedelta(hours=h, minutes=5), duration_s=3.0)


def _phone_data():
    """Something on every page: decisions, load events, snapshots, a replay run with plots."""
    import datetime as dt
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from models_registry import models as m
    from tests.console.conftest import make_decision

    now = timezone.now()
    _slo_history()
    decision = make_decision("code_generation", "interactive")
    make_decision("general", "batch")
    gpu = m.Gpu.objects.get(index=1)
    for i in range(20):
        m.GpuSnapshot.objects.create(gpu=gpu, taken_at=now - dt.timedelta(minutes=i), total_mib=gpu.total_mib,
                                     used_mib=3000 + 50 * i, free_mib=gpu.total_mib - 3000)
    m.LoadEvent.objects.create(model=m.LlmModel.objects.get(tag="llama3.2:3b"), endpoint=m.Endpoint.objects.get(
        name="tower-nvidia"), kind="load", trigger="selection", requested_at=now - dt.timedelta(minutes=3),
        finished_at=now - dt.timedelta(minutes=3), duration_s=3.2, gpu_keys=["tower/1"])
    root = Path(__file__).resolve().parents[2]
    call_command("replay", trace=str(root / "data/traces/azure2023_merged_by_service.csv"),
                 profile=str(root / "profiles/tower.yaml"), mapping="azure2023", sample=0.005, seed=3,
                 start="2023-11-16T18:15:46Z", policy="towerops,ollama_default",
                 what_if=[str(root / "profiles/whatif/raise-code-floor.yaml")], stdout=StringIO())
    return decision, m.ReplayRun.objects.get(), m.PreloadWindow.objects.order_by("name").first()


def test_every_console_page_fits_a_phone(phone):
    decision, run, window = _phone_data()
    pages = {
        "dashboard": "/", "decisions": "/decisions/", "decision_detail": f"/decisions/{decision.pk}/",
        "load_events": "/load-events/", "catalog": "/catalog/", "vram": "/vram/?gpu=tower/1&window=1h",
        "vram_empty": "/vram/?gpu=tower/0&window=1h", "preload": "/preload/", "preload_new": "/preload/new/",
        "preload_edit": f"/preload/{window.pk}/", "slo": "/slo/", "replays": "/replay/",
        "replay_run": f"/replay/{run.pk}/",
    }
    too_wide = {}
    for name, url in pages.items():
        phone.goto(url)
        phone.wait_for_load_state("load")
        if name in ("vram", "slo"):
            phone.wait_for_selector(".uplot")
        width = _page_width(phone, name)
        if width > PHONE["width"]:
            too_wide[name] = width
    assert too_wide == {}, f"pages wider than a 390 px phone (px): {too_wide}"


def test_the_gateway_queues_fit_a_phone_and_stay_live(phone, settings, gateway_queue_prefix):
    """The dashboard's queue panel with a queue the gateway's own admission filled (test Redis)."""
    from tests.console.conftest import gateway_queue
    from tests.helpers import redis_test_url

    settings.TOWEROPS_GATEWAY_REDIS_URL = redis_test_url()
    with gateway_queue(settings.TOWEROPS_GATEWAY_REDIS_URL, gateway_queue_prefix):
        phone.goto("/")
        row = phone.locator('#gateway-queues tr[data-queue="llama3.2:3b|tower-nvidia"]')
        assert row.inner_text().split() == ["llama3.2:3b", "1", "/", "1", "2", "1", "0", "1"]
        _assert_fits(phone, "dashboard_queues")
    # Released: the next poll (every 5 s) shows the queue empty.
    phone.wait_for_selector("#gateway-queues >> text=nothing in flight or waiting at the gateway", timeout=15_000)


def test_the_nav_collapses_on_a_phone_and_opens_to_readable_links(phone):
    links = phone.locator("header.top nav a")
    assert links.count() >= 8
    assert not links.first.is_visible()  # collapsed behind the menu button
    phone.click("header.top .menu-button")
    for i in range(links.count()):
        link = links.nth(i)
        assert link.is_visible()
        box = link.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], link.inner_text()
        colours = link.evaluate(COLOURS_JS)
        assert contrast(colours["fg"], colours["bg"]) >= 4.5, (link.inner_text(), colours)
    _assert_fits(phone, "nav_open")
    phone.click("header.top nav >> text=SLOs")
    phone.wait_for_url("**/slo/")


def test_the_week_grids_numbers_are_readable_and_now_is_marked(page):
    page.goto("/preload/")
    cells = page.locator("table.week td.slot")
    assert cells.count() == 7 * 24
    numbered = page.locator("table.week td.slot.on")
    assert numbered.count() > 0
    for i in range(numbered.count()):
        colours = numbered.nth(i).evaluate(COLOURS_JS)
        assert contrast(colours["fg"], colours["bg"]) >= 4.5, colours
    now = page.locator("table.week td.slot.now")
    assert now.count() == 1
    from models_registry.console.preload_grid import display_tz
    import datetime as dt

    local = dt.datetime.now(display_tz())
    assert (now.get_attribute("data-day"), now.get_attribute("data-hour")) == (str(local.weekday()), str(local.hour))
    shot(page, "preload_now")


def test_accepting_a_suggested_window_replaces_the_windows(page):
    from models_registry import models as m
    from tests.console.test_preload_suggestions import WINDOW, make_suggestion

    s = make_suggestion()
    page.click("text=Preload")
    page.wait_for_selector("#suggestion")
    assert WINDOW["name"] in page.inner_text("#suggested-windows")
    assert "51.2 %" in page.inner_text("#suggestion-estimate")
    shot(page, "preload-suggestion")
    page.click("#accept-suggestion")
    page.wait_for_selector("#suggestion", state="detached")
    rows = page.inner_text("#windows")
    assert WINDOW["name"] in rows and "enabled" in rows
    shot(page, "preload-accepted")
    enabled = list(m.PreloadWindow.objects.filter(enabled=True).values_list("name", flat=True))
    assert enabled == [WINDOW["name"]]
    s.refresh_from_db()
    assert s.status == "accepted" and s.decided_by.username == "alice"
    page.reload()  # the page as it is now: no open suggestion, the old windows disabled
    assert page.locator("#suggestion").count() == 0
    assert "disabled" in page.inner_text("#windows")
