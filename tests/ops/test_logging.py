"""Logs: time, level, process and logger on every line; LOG_LEVEL; LOG_FORMAT=json (python-json-logger);
no django-axes banner on manage.py calls."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMIT = ("import logging, logging.config; from towerops.logconfig import logging_config; "
        "logging.config.dictConfig(logging_config()); "
        "logging.getLogger('towerops.example').info('loaded %s', 'tinyllama'); "
        "logging.getLogger('towerops.example').debug('hidden unless LOG_LEVEL=DEBUG')")


def run(code_or_args, **env) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else [sys.executable, *code_or_args]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_a_text_line_has_time_level_process_and_logger():
    out = run(EMIT, LOG_FORMAT="text", LOG_LEVEL="INFO")
    assert out.returncode == 0, out.stderr
    [line] = out.stderr.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO MainProcess\[\d+\] towerops.example: loaded tinyllama",
                        line), line


def test_json_lines_carry_the_same_fields():
    out = run(EMIT, LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert [r["message"] for r in records] == ["loaded tinyllama", "hidden unless LOG_LEVEL=DEBUG"]
    assert {"time", "level", "process", "process_name", "logger"} <= set(records[0])
    assert (records[0]["level"], records[0]["logger"], records[0]["process"]) == ("INFO", "towerops.example",
                                                                                  records[1]["process"])


def test_a_bad_log_setting_names_the_variable_and_what_is_allowed():
    out = run(["manage.py", "check"], LOG_FORMAT="xml")
    assert out.returncode != 0
    assert "LOG_FORMAT='xml': use text or json" in out.stderr
    out = run(["manage.py", "check"], LOG_LEVEL="LOUD")
    assert "LOG_LEVEL='LOUD': use DEBUG, INFO, WARNING, ERROR or CRITICAL" in out.stderr


def test_manage_py_prints_no_axes_banner():
    out = run(["manage.py", "check"])
    assert out.returncode == 0, out.stderr
    assert "AXES" not in out.stdout + out.stderr
    assert out.stdout.strip() == "System check identified no issues (0 silenced)."
