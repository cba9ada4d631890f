"""models_registry/conf.py: every TOWEROPS_* setting in one table, read at access time, checked at startup."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks

from models_registry import conf
from models_registry.slo import rollups

ROOT = Path(__file__).resolve().parent.parent
# TOWEROPS_* names the app reads that are not settings: bench/bench_api.py's extra endpoints.
# Not Django settings: a bench-only switch, scripts/run's profile path, and the directory the
# simulator hands its GPU readings to the collector through (set by runstack for its children).
NOT_SETTINGS = {"TOWEROPS_BENCH_ENDPOINTS", "TOWEROPS_PROFILE", "TOWEROPS_SIMULATED_GPU_DIR"}


# ------------------------------------------------------------------------------- the table


def test_every_default_is_allowed_and_parses_to_a_value():
    for name, setting in conf.SETTINGS.items():
        assert setting.problem(setting.default) is None, name
        assert conf.from_env(name, {}) == setting.kind.clean(setting.default)
    assert conf.from_env("TOWEROPS_LOAD_TIMEOUT_S", {}) == 600.0
    assert conf.from_env("TOWEROPS_METRICS_ALLOW_IPS", {}) == ["127.0.0.1", "::1"]
    assert conf.from_env("TOWEROPS_VAR_DIR", {}) == ROOT / "var"


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("TOWEROPS_LOAD_TIMEOUT_S", "600", 600.0),
    ("TOWEROPS_LOAD_TIMEOUT_S", "10m", 600.0),
    ("TOWEROPS_LOAD_TIMEOUT_S", "1h30m", 5400.0),
    ("TOWEROPS_LOAD_TIMEOUT_S", " 2.5 ", 2.5),
    ("TOWEROPS_PRELOAD_IDLE_MIN", "5", 5.0),  # a bare number counts the name's unit: minutes
    ("TOWEROPS_PRELOAD_IDLE_MIN", "90s", 1.5),
    ("TOWEROPS_CONFIG_TTL_S", "0", 0.0),
    ("TOWEROPS_DECISION_RAW_DAYS", "0", 0),
    ("TOWEROPS_METRICS_ALLOW_IPS", "", []),
    ("TOWEROPS_METRICS_ALLOW_IPS", " 10.0.0.0/8 , ::1 ", ["10.0.0.0/8", "::1"]),
    ("TOWEROPS_POLICY", '{"queue_slot_s": 2}', {"queue_slot_s": 2}),
    ("TOWEROPS_VAR_DIR", "/srv/towerops", Path("/srv/towerops")),
    ("TOWEROPS_VAR_DIR", "data", ROOT / "data"),
])
def test_the_environment_is_read_in_the_setting_s_unit(name, text, expected):
    assert conf.from_env(name, {name: text}) == expected


def test_a_value_not_allowed_is_kept_as_written_so_the_check_can_quote_it():
    assert conf.from_env("TOWEROPS_LOAD_TIMEOUT_S", {"TOWEROPS_LOAD_TIMEOUT_S": "-5"}) == "-5"
    assert conf.from_env("TOWEROPS_LOAD_TIMEOUT_S", {"TOWEROPS_LOAD_TIMEOUT_S": "soon"}) == "soon"
    with pytest.raises(conf.InvalidSetting, match="TOWEROPS_VAR_DIR=''"):
        conf.from_env("TOWEROPS_VAR_DIR", {"TOWEROPS_VAR_DIR": ""}, needed_now=True)


BAD = [
    ("TOWEROPS_LOAD_TIMEOUT_S", -5, "must be more than 0"),
    ("TOWEROPS_LOAD_TIMEOUT_S", "-5", "must be more than 0"),
    ("TOWEROPS_LOAD_TIMEOUT_S", "soon", 'time: invalid duration "soon"'),
    ("TOWEROPS_LOAD_TIMEOUT_S", "inf", "not a finite duration"),
    ("TOWEROPS_LOAD_TIMEOUT_S", 10**9, "must be at most 365 days"),
    ("TOWEROPS_LOAD_TIMEOUT_S", True, "not a duration"),
    ("TOWEROPS_REQUESTED_TIMEOUT_S", 0, "must be more than 0"),
    ("TOWEROPS_SYNC_INTERVAL_S", "10x", 'time: invalid duration "10x"'),
    ("TOWEROPS_PRELOAD_IDLE_MIN", "-1m", "must be at least 0"),
    ("TOWEROPS_CONFIG_TTL_S", -0.5, "must be at least 0"),
    ("TOWEROPS_SNAPSHOT_FRESH_S", 0, "must be more than 0"),
    ("TOWEROPS_DECISION_RAW_DAYS", -1, "must be between 0 and 36500"),
    ("TOWEROPS_SNAPSHOT_RAW_DAYS", "2.5", "not a whole number"),
    ("TOWEROPS_METRICS_ALLOW_IPS", ["10.0.0.0/8", "nonsense"], "'nonsense' is not an IP address or network"),
    ("TOWEROPS_POLICY", {"queue_slot": 1}, "unknown key 'queue_slot'"),
    ("TOWEROPS_POLICY", '{"queue_slot_s": -1}', "queue_slot_s must be a number ≥ 0"),
    ("TOWEROPS_POLICY", "queue_slot_s=2", "not JSON"),
    ("TOWEROPS_VAR_DIR", "", "not a path"),
]


@pytest.mark.parametrize(("name", "bad", "why"), BAD)
def test_a_bad_value_is_named_with_what_is_allowed_by_the_check_and_on_access(settings, name, bad, why):
    setattr(settings, name, bad)
    (message,) = conf.problems()
    assert message.startswith(f"{name}={bad!r}: {why}")
    assert f"allowed: {conf.SETTINGS[name].kind.allowed}" in message

    errors = [e for e in run_checks() if e.id == "towerops.E001"]
    assert [e.msg for e in errors] == [message]
    assert errors[0].is_serious()

    with pytest.raises(conf.InvalidSetting) as exc:
        conf.value(name)
    assert str(exc.value) == message
    with pytest.raises(conf.InvalidSetting, match=re.escape(message)):
        conf.refuse_bad_settings()


def test_the_defaults_pass_the_check():
    assert conf.problems() == []
    assert [e for e in run_checks() if e.id.startswith("towerops.")] == []
    conf.refuse_bad_settings()  # does not raise


def test_manage_py_defers_to_the_system_checks_instead_of_refusing_at_ready(settings, monkeypatch):
    settings.TOWEROPS_LOAD_TIMEOUT_S = -1
    monkeypatch.setattr(conf, "_report_through_checks", True)
    conf.refuse_bad_settings()  # manage.py: the check reports it instead
    assert [e.id for e in run_checks() if e.id.startswith("towerops.")] == ["towerops.E001"]


def test_value_reads_the_settings_when_asked(settings):
    settings.TOWEROPS_LOAD_TIMEOUT_S = 30
    assert conf.value("TOWEROPS_LOAD_TIMEOUT_S") == 30.0
    assert rollups.settle_s() == 90.0  # a module reading through conf follows
    settings.TOWEROPS_LOAD_TIMEOUT_S = "2m"  # as the environment would write it
    assert conf.value("TOWEROPS_LOAD_TIMEOUT_S") == 120.0
    del settings.TOWEROPS_LOAD_TIMEOUT_S
    assert conf.value("TOWEROPS_LOAD_TIMEOUT_S") == 600.0  # the table's default
    settings.TOWEROPS_METRICS_ALLOW_IPS = ["10.1.0.0/16"]
    assert conf.value("TOWEROPS_METRICS_ALLOW_IPS") == ["10.1.0.0/16"]


# ------------------------------------------------------------------------------- no setting outside the table


def test_readme_lists_every_setting_as_the_table_says():
    readme = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `TOWEROPS_")]
    expected = conf.readme_rows()
    assert readme == expected, "README.md's TowerOps table differs from models_registry/conf.py; it should read:\n" + \
        "\n".join(expected)


def _app_sources() -> list[Path]:
    return sorted([*(ROOT / "towerops").rglob("*.py"), *(ROOT / "models_registry").rglob("*.py")])


def test_every_towerops_name_the_app_reads_is_in_the_table():
    found = {}
    for path in _app_sources():
        for name in re.findall(r"\bTOWEROPS_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            found.setdefault(name, path.relative_to(ROOT))
    unknown = {n: str(p) for n, p in found.items() if n not in conf.SETTINGS and n not in NOT_SETTINGS}
    assert unknown == {}, "add these to models_registry/conf.py's table (and README), or to NOT_SETTINGS here"


def test_modules_read_settings_through_conf_only():
    pattern = re.compile(r"getattr\(\s*settings\s*,\s*[\"']TOWEROPS_|settings\.TOWEROPS_|environ[^\n]*[\"']TOWEROPS_")
    allowed = {ROOT / "towerops" / "settings.py", ROOT / "towerops" / "urls.py"}  # urls.py: NOT_SETTINGS
    offenders = [str(p.relative_to(ROOT)) for p in _app_sources() if p not in allowed and pattern.search(p.read_text())]
    assert offenders == []


def test_settings_py_sets_every_setting():
    import towerops.settings as project_settings

    assert [n for n in conf.SETTINGS if not hasattr(project_settings, n)] == []


# ------------------------------------------------------------------------------- refusing to start


def _run(args: list[str], bad: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "towerops.settings", **bad}
    try:
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{args} kept running with {bad}: it did not refuse to start") from exc


BAD_ENV = {"TOWEROPS_LOAD_TIMEOUT_S": "-5", "TOWEROPS_SYNC_INTERVAL_S": "ten minutes"}


def test_manage_py_check_stops_on_a_negative_timeout_or_an_unparsable_duration():
    good = _run([sys.executable, "manage.py", "check"], {})
    assert good.returncode == 0, good.stderr

    bad = _run([sys.executable, "manage.py", "check"], BAD_ENV)
    assert bad.returncode != 0
    assert "SystemCheckError" in bad.stderr and "Traceback" not in bad.stderr
    assert "(towerops.E001) TOWEROPS_LOAD_TIMEOUT_S='-5': must be more than 0; allowed: > 0" in bad.stderr
    assert "(towerops.E001) TOWEROPS_SYNC_INTERVAL_S='ten minutes': time: invalid duration" in bad.stderr


def test_a_process_that_runs_no_checks_refuses_at_django_setup():
    result = _run([sys.executable, "-c", "import django; django.setup(); print('started')"], BAD_ENV)
    assert result.returncode != 0 and "started" not in result.stdout
    assert "models_registry.conf.InvalidSetting: bad TowerOps settings:" in result.stderr
    assert "TOWEROPS_LOAD_TIMEOUT_S='-5': must be more than 0" in result.stderr
    assert "TOWEROPS_SYNC_INTERVAL_S='ten minutes'" in result.stderr


def test_a_celery_worker_refuses_to_start():
    result = _run([sys.executable, "-m", "celery", "-A", "towerops", "worker", "-Q", "test-conf-refusal",
                   "--pool", "solo", "--without-mingle", "--without-gossip", "--without-heartbeat"],
                  {"TOWEROPS_LOAD_TIMEOUT_S": "10x"}, timeout=60)
    assert result.returncode != 0
    assert "TOWEROPS_LOAD_TIMEOUT_S='10x': time: invalid duration \"10x\"" in result.stdout + result.stderr


def test_gunicorn_refuses_to_start():
    result = _run([sys.executable, "-m", "gunicorn", "towerops.wsgi", "--bind", "127.0.0.1:0", "-w", "1"],
                  {"TOWEROPS_DECISION_RAW_DAYS": "-1"}, timeout=60)
    assert result.returncode != 0
    assert "TOWEROPS_DECISION_RAW_DAYS='-1': must be between 0 and 36500" in result.stderr
