"""The pure forecast (learning.forecast): demand estimated by hand-computed cases, windows by the placement rules."""
import datetime as dt
from pathlib import Path

import pytest

from models_registry.catalog.profile import load_profile_file
from models_registry.learning import forecast
from models_registry.learning.forecast import HOURS_PER_WEEK, Demand, ForecastError, estimate_demand, recommend_windows
from models_registry.policy import never_fits, warmset
from models_registry.replay import policies, simulate
from models_registry.replay.traces import Request

UTC = dt.timezone.utc
MONDAY = dt.datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
PROFILE = load_profile_file(Path(__file__).resolve().parents[2] / "profiles" / "tower.yaml")
CODE = ("code_generation", "interactive")


def _at(week, day, hour, minute=0):
    return MONDAY + dt.timedelta(weeks=week, days=day, hours=hour, minutes=minute)


def test_a_holiday_week_does_not_pull_the_median_down():
    # Mon 10:00: 6 requests in weeks 0 and 2, none in week 1 (a holiday).
    events = [(_at(w, 0, 10, k), *CODE) for w in (0, 2) for k in range(6)]
    d = estimate_demand(events, MONDAY, MONDAY + dt.timedelta(weeks=3))
    # slot: median(6, 0, 6) = 6 (the mean would be 4), weight 3/4; hour of day 10 on weekdays: median
    # over 15 days = 0, weight 15/16; overall: 12 requests / 504 hours.
    expected = 0.75 * 6 + 0.25 * (15 / 16 * 0 + 1 / 16 * 12 / 504)
    assert d.rates[CODE][10] == pytest.approx(expected)
    assert d.weeks == 3


def test_a_day_of_history_is_shrunk_toward_the_hour_of_day_and_the_overall_rate():
    events = [(_at(0, 0, 10, k), *CODE) for k in range(4)]
    d = estimate_demand(events, MONDAY, MONDAY + dt.timedelta(days=1))
    overall = 4 / 24
    hour10 = 0.5 * 4 + 0.5 * overall  # one day seen: v = 1/2
    assert d.rates[CODE][10] == pytest.approx(0.5 * 4 + 0.5 * hour10)  # Monday 10:00, seen once: w = 1/2
    assert d.rates[CODE][24 + 10] == pytest.approx(hour10)  # Tuesday 10:00, never seen: the hour of day's rate
    assert d.rates[CODE][11] == pytest.approx(0.5 * (0.5 * overall))  # seen, empty: shrunk from 0 toward the rest
    assert d.rates[CODE][5 * 24 + 10] == pytest.approx(hour10)  # no weekend day seen: pooled with the weekday


def test_epoch_seconds_count_like_datetimes_and_events_outside_the_span_are_ignored():
    inside = [(_at(0, 0, 10).timestamp(), *CODE), (_at(0, 0, 10), *CODE)]
    outside = [(_at(0, 1, 10), *CODE), (MONDAY - dt.timedelta(hours=1), *CODE)]
    d = estimate_demand(inside + outside, MONDAY, MONDAY + dt.timedelta(days=1))
    assert d.rates == estimate_demand(inside, MONDAY, MONDAY + dt.timedelta(days=1)).rates


def test_the_hour_of_week_is_local_time_in_the_zone():
    events = [(dt.datetime(2026, 11, 2, 9, 30, tzinfo=UTC), *CODE)]  # 10:30 in Berlin (UTC+1 in November)
    d = estimate_demand(events, MONDAY, MONDAY + dt.timedelta(days=1), "Europe/Berlin")
    assert max(range(HOURS_PER_WEEK), key=lambda h: d.rates[CODE][h]) == 10


@pytest.mark.parametrize("call, field", [
    (lambda: estimate_demand([], dt.datetime(2026, 11, 2), MONDAY + dt.timedelta(days=1)), "since"),
    (lambda: estimate_demand([], MONDAY, MONDAY), "until"),
    (lambda: estimate_demand([("soon", *CODE)], MONDAY, MONDAY + dt.timedelta(days=1)), "events[0].when"),
    (lambda: estimate_demand([(MONDAY,)], MONDAY, MONDAY + dt.timedelta(days=1)), "events[0]"),
    (lambda: estimate_demand([], MONDAY, MONDAY + dt.timedelta(days=1), "Mars/Olympus"), "zone"),
])
def test_bad_input_is_an_error_naming_the_field(call, field):
    with pytest.raises(ForecastError, match=rf"^{field.replace('[', '.').replace(']', '.')}"):
        call()


def _demand(series: dict, zone="UTC") -> Demand:
    """{(task, urgency): {hour of week: rate}} as a Demand."""
    return Demand({k: tuple(v.get(h, 0.0) for h in range(HOURS_PER_WEEK)) for k, v in series.items()}, zone, 168)


def test_office_hours_of_code_become_one_weekday_window_of_the_best_code_model_that_fits():
    d = _demand({CODE: {day * 24 + h: 5.0 for day in range(5) for h in range(9, 17)}})
    (w,) = recommend_windows(PROFILE.to_world(0.0), d)
    # qwen2.5-coder:32b (0.93) fits no GPU of the Tower: its 7b (0.88) is the best that does.
    assert (w.days, w.start, w.end, w.models) == ((0, 1, 2, 3, 4), dt.time(9), dt.time(17), ("qwen2.5-coder:7b",))
    assert w.to_dict()["days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert dict(w.endpoints)["qwen2.5-coder:7b"] in {"tower-amd", "tower-nvidia"}


def test_a_night_past_midnight_every_day_is_one_window_and_negligible_hours_get_none():
    night = {day * 24 + h: 3.0 for day in range(7) for h in (*range(0, 9), 22, 23)}
    day_trickle = {day * 24 + 12: 0.2 for day in range(7)}  # below MIN_RATE: no model for it
    (w,) = recommend_windows(PROFILE.to_world(0.0), _demand({("chat", "interactive"): {**night, **day_trickle}}))
    assert (w.days, w.start, w.end, w.models) == (tuple(range(7)), dt.time(22), dt.time(9), ("llama3.2:3b",))
    assert w.name == "predicted 22:00-09:00 every day"


def test_a_busy_mix_asks_for_more_copies_and_they_fit_together_by_the_placement_rules():
    busy = {h: 200.0 for h in range(HOURS_PER_WEEK)}
    d = _demand({CODE: busy, ("chat", "critical"): busy, ("analysis", "batch"): busy})
    windows = recommend_windows(PROFILE.to_world(0.0), d)
    # The same set all week: a window cannot run 24 h, so every day is two halves.
    assert [(w.start, w.end, w.days) for w in windows] == [(dt.time(0), dt.time(12), tuple(range(7))),
                                                            (dt.time(12), dt.time(0), tuple(range(7)))]
    models = windows[0].models
    assert len(models) >= 3 and "qwen2.5-coder:7b" in models and "llama3.2:3b" in models
    assert never_fits(PROFILE.to_world(0.0), models) == ()
    assert recommend_windows(PROFILE.to_world(0.0), d) == windows  # deterministic


def test_the_clairvoyant_and_the_forecast_share_one_warm_set_rule(monkeypatch):
    assert policies.demand_warm_set is warmset.demand_warm_set is forecast.demand_warm_set
    calls = []

    def spy(world, demand, per_task=None):
        calls.append((dict(demand), per_task))
        return warmset.demand_warm_set(world, demand, per_task)

    monkeypatch.setattr(policies, "demand_warm_set", spy)
    monkeypatch.setattr(forecast, "demand_warm_set", spy)
    reqs = [Request(float(i), "code_generation" if i % 3 else "chat", "interactive", 100, 20) for i in range(30)]
    simulate(PROFILE, reqs, "clairvoyant")
    assert calls == [({"code_generation": 20, "chat": 10}, None)]
    recommend_windows(PROFILE.to_world(0.0), _demand({CODE: {10: 5.0}}))
    assert calls[1] == ({"code_generation": 10.0}, {"code_generation": 1})
