"""Profile values are bounded to what the columns and the physics allow: every bad value is one
clear message naming the file and the field, and the import writes nothing (issue 13, defect 9)."""
import io

import pytest
import yaml
from django.core.management import CommandError, call_command

from models_registry import models as m
from tests.catalog.test_import import snapshot, write
from tests.conftest import TOWER_PROFILE


def tower():
    return yaml.safe_load(TOWER_PROFILE.read_text())


def set_path(data, path, value):
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def two_hosts_one_queue(data):
    second = {"name": "tower2", "queue": data["hosts"][0].get("queue") or "host.tower",
              "gpus": [], "endpoints": []}
    data["hosts"].append(second)
    return data


# (what, change, field named in the message, words of the message)
CASES = [
    ("patience .inf", lambda d: set_path(d, ["urgency_classes", 0, "patience_s"], float("inf")),
     "urgency_classes[0].patience_s", "finite"),
    ("load_s .inf", lambda d: set_path(d, ["models", 0, "load_s"], float("inf")), "models[0].load_s", "finite"),
    ("load_s .nan", lambda d: set_path(d, ["models", 0, "load_s"], float("nan")), "models[0].load_s", "finite"),
    ("quality .nan", lambda d: set_path(d, ["models", 0, "quality", "general"], float("nan")),
     "models[0].quality.general", "finite"),
    ("GPU index 40000", lambda d: set_path(d, ["hosts", 0, "gpus", 0, "index"], 40000),
     "hosts[0].gpus[0].index", "less than or equal to 255"),
    ("num_ctx 1e10", lambda d: set_path(d, ["hosts", 0, "endpoints", 0, "num_ctx"], 10**10),
     "hosts[0].endpoints[0].num_ctx", "less than or equal to 2097152"),
    ("vram_gb 1e30", lambda d: set_path(d, ["models", 0, "vram_gb"], 1e30), "models[0].vram_gb",
     "less than or equal to 1024"),
    ("keep_alive of 21 characters", lambda d: set_path(d, ["hosts", 0, "endpoints", 0, "keep_alive"], "1" * 20 + "m"),
     "hosts[0].endpoints[0].keep_alive", "at most 20 characters"),
    ("family of 101 characters", lambda d: set_path(d, ["models", 0, "family"], "x" * 101), "models[0].family",
     "at most 100 characters"),
    ("context_length 1e12", lambda d: set_path(d, ["models", 0, "context_length"], 10**12),
     "models[0].context_length", "less than or equal"),
    ("two hosts with one queue", two_hosts_one_queue, "hosts[1].queue", "duplicate agent queue"),
    ("policy knob .inf", lambda d: set_path(d, ["policy"], {"recent_use_window_s": float("inf")}), "policy",
     "finite"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("what,change,field,words", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_names_the_file_and_field_and_writes_nothing(tmp_path, what, change, field, words):
    call_command("load_profile", str(TOWER_PROFILE), stdout=io.StringIO())
    before = snapshot()
    path = write(tmp_path, change(tower()))
    with pytest.raises(CommandError) as err:
        call_command("load_profile", str(path), stdout=io.StringIO())
    message = str(err.value)
    assert str(path) in message and field in message and words in message, message
    assert "Traceback" not in message
    assert snapshot() == before


@pytest.mark.django_db
def test_a_non_utf8_file_is_one_clear_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(TOWER_PROFILE.read_text().replace("# ", "# caf\u00e9 ", 1).encode("latin-1"))
    with pytest.raises(CommandError) as err:
        call_command("load_profile", str(path), stdout=io.StringIO())
    assert str(path) in str(err.value) and "not UTF-8" in str(err.value)
    assert m.Host.objects.count() == 0


def test_every_numeric_column_limit_is_above_its_profile_bound():
    """The bounds stay below the columns: PositiveIntegerField holds < 2**31, stored in MiB or tokens."""
    from models_registry.catalog import profile

    assert profile.MAX_GB * 1024 < 2**31 and profile.MAX_CTX < 2**31
    assert m.Gpu._meta.get_field("index").__class__.__name__ == "PositiveSmallIntegerField"  # < 32768 > 255
    assert m.Endpoint._meta.get_field("keep_alive").max_length == 20
    assert m.LlmModel._meta.get_field("family").max_length == 100
    assert m.LlmModel._meta.get_field("quantization").max_length == 50
