"""`manage.py load_profile`: idempotent, all or nothing, and precise about what is wrong."""
import io

import pytest
import yaml
from django.core.management import CommandError, call_command

from models_registry import models as m
from tests.conftest import TOWER_PROFILE

TABLES = [m.Host, m.Gpu, m.Endpoint, m.LlmModel, m.TaskType, m.QualityScore, m.UrgencyClass, m.PreloadWindow]


def snapshot():
    return {t.__name__: sorted(map(str, t.objects.values_list(flat=False).order_by("pk"))) for t in TABLES}


def write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.django_db
def test_tower_profile_imports_the_seeds_machine_and_models():
    out = io.StringIO()
    call_command("load_profile", str(TOWER_PROFILE), stdout=out)
    amd = m.Gpu.objects.get(vendor="amd")
    nvidia = m.Gpu.objects.get(vendor="nvidia")
    assert (amd.total_mib, amd.usable_mib) == (16384, 15360)  # the seed's "15360MB available"
    assert nvidia.total_mib == 12288
    qwen = m.LlmModel.objects.get(tag="qwen2.5-coder:7b")
    assert (qwen.vram_mib, qwen.load_s) == (4608, 13.5)
    assert m.QualityScore.objects.get(model=qwen, task_type__name="code_generation").score == 0.88
    assert m.LlmModel.objects.filter(kind="remote").count() == 1
    assert set(m.UrgencyClass.objects.values_list("name", flat=True)) == {"critical", "interactive", "background", "batch"}
    night = m.PreloadWindow.objects.get(name="night")
    assert list(night.models.values_list("tag", flat=True)) == ["tinyllama"]
    assert m.Endpoint.objects.get(name="tower-amd").gpus.get() == amd


@pytest.mark.django_db
def test_importing_the_same_file_twice_gives_the_same_rows():
    call_command("load_profile", str(TOWER_PROFILE), stdout=io.StringIO())
    first = snapshot()
    history_rows = m.LlmModel.history.count()
    out = io.StringIO()
    call_command("load_profile", str(TOWER_PROFILE), stdout=out)
    assert snapshot() == first
    assert m.LlmModel.history.count() == history_rows  # nothing changed, so no history either
    assert "created nothing; updated nothing" in out.getvalue()


@pytest.mark.django_db
def test_changed_value_is_updated_in_place(tmp_path):
    call_command("load_profile", str(TOWER_PROFILE), stdout=io.StringIO())
    data = yaml.safe_load(TOWER_PROFILE.read_text())
    data["models"][0]["load_s"] = 2.5
    call_command("load_profile", str(write(tmp_path, data)), stdout=io.StringIO())
    assert m.LlmModel.objects.get(tag=data["models"][0]["tag"]).load_s == 2.5
    assert m.LlmModel.objects.count() == len(data["models"])


def _bad(mutate):
    data = yaml.safe_load(TOWER_PROFILE.read_text())
    mutate(data)
    return data


BAD_FILES = [
    ("syntax", "hosts: [\n  - name: x\n    gpus: {", "line"),
    ("unknown field", _bad(lambda d: d["models"][3].update(colour="blue")), "models[3].colour: unknown field"),
    ("wrong type", _bad(lambda d: d["models"][3].update(vram_gb="lots")), "models[3].vram_gb"),
    ("out of range", _bad(lambda d: d["models"][1]["quality"].update(general=1.5)), "models[1].quality"),
    ("dangling model", _bad(lambda d: d["preload_windows"][0]["models"].append("nope:1b")),
     "preload_windows[0].models[2]: unknown model 'nope:1b'"),
    ("dangling task", _bad(lambda d: d["models"][0]["quality"].update(poetry=0.5)), "models[0].quality.poetry"),
    ("dangling gpu", _bad(lambda d: d["hosts"][0]["endpoints"][0].update(gpus=[7])), "hosts[0].endpoints[0].gpus[0]"),
    ("reserved > total", _bad(lambda d: d["hosts"][0]["gpus"][1].update(reserved_gb=13)), "hosts[0].gpus[1].reserved_gb"),
    ("empty window", _bad(lambda d: d["preload_windows"][0].update(end="09:00")), "preload_windows[0].end"),
    ("duplicate tag", _bad(lambda d: d["models"].append(dict(d["models"][0]))), "models[8].tag: duplicate"),
    ("unknown urgency", _bad(lambda d: d["urgency_classes"][0].update(name="asap")), "urgency_classes[0].name"),
    ("bad zone", _bad(lambda d: d["preload_windows"][0].update(timezone="Mars/Base")), "preload_windows[0].timezone"),
    ("bad keep_alive", _bad(lambda d: d["hosts"][0]["endpoints"][1].update(keep_alive="soon")),
     "hosts[0].endpoints[1].keep_alive: Value error, keep_alive 'soon' is not an Ollama duration"),
    ("zero prefill", _bad(lambda d: d["models"][2].update(prefill_tokens_per_s=0)), "models[2].prefill_tokens_per_s"),
]


def test_keep_alive_and_prefill_are_read_as_ollama_and_the_replay_read_them():
    from models_registry.catalog.profile import (
        PREFILL_PER_DECODE,
        load_profile_file,
        parse_profile,
    )

    p = load_profile_file(TOWER_PROFILE)
    assert [e.keep_alive_s for e in p.hosts[0].endpoints] == [float("inf")] * 2  # -1m: keep warm
    qwen = next(x for x in p.models if x.tag == "qwen2.5-coder:7b")
    assert qwen.prefill_tokens_per_s is None and qwen.prefill_tps == PREFILL_PER_DECODE * 45 == 900
    data = _bad(lambda d: (d["hosts"][0]["endpoints"][0].update(keep_alive="1h30m"),
                           d["models"][2].update(prefill_tokens_per_s=1500)))
    p = parse_profile(data)
    assert p.hosts[0].endpoints[0].keep_alive_s == 5400
    assert next(x for x in p.models if x.tag == "qwen2.5-coder:7b").prefill_tps == 1500


@pytest.mark.django_db
def test_prefill_and_the_context_reach_the_live_policy(tmp_path):
    """The catalog keeps a model's prefill speed (empty: 20 x tokens/s) and the endpoint's num_ctx:
    the World a live selection sees has both, as the replay's does."""
    from models_registry.catalog.importer import import_profile
    from models_registry.catalog.profile import parse_profile
    from models_registry.selection import world as state

    data = _bad(lambda d: (d["models"][2].update(prefill_tokens_per_s=1500),  # qwen2.5-coder:7b
                           d["task_types"][5].update(default_input_tokens=3000)))  # summarization
    import_profile(parse_profile(data))
    assert m.TaskType.objects.get(name="summarization").default_input_tokens == 3000
    assert m.TaskType.objects.get(name="general").default_input_tokens == 0
    assert m.LlmModel.objects.get(tag="qwen2.5-coder:7b").prefill_tokens_per_s == 1500
    assert m.LlmModel.objects.get(tag="mistral:7b").prefill_tokens_per_s is None
    state.invalidate_config()
    cfg = state.load_config()
    by_tag = {x.tag: x for x in cfg.models}
    assert by_tag["qwen2.5-coder:7b"].prefill_tokens_per_s == 1500
    assert by_tag["mistral:7b"].prefill_tokens_per_s == 20 * 42
    assert all(x.prefill_tokens_per_s == 0 for x in cfg.models if x.kind == "remote")
    assert cfg.endpoint_ctx == {"tower-amd": 4096, "tower-nvidia": 4096}
    assert {t.name: t.default_input_tokens for t in cfg.task_types}["summarization"] == 3000


@pytest.mark.django_db
@pytest.mark.parametrize("label,data,expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_changes_nothing_and_names_the_field(tmp_path, label, data, expected):
    call_command("load_profile", str(TOWER_PROFILE), stdout=io.StringIO())
    before = snapshot()
    path = write(tmp_path, data)
    with pytest.raises(CommandError) as err:
        call_command("load_profile", str(path), stdout=io.StringIO())
    assert str(path) in str(err.value)
    assert expected in str(err.value)
    assert snapshot() == before


@pytest.mark.django_db
def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("load_profile", str(tmp_path / "nope.yaml"))
