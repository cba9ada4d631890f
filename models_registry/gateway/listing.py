"""What the gateway lists and describes: the virtual models and the catalog's local models, in
Ollama's shapes (/api/tags, /api/ps, /api/show) and OpenAI's (/v1/models).

Virtual models: ``auto`` (``auto:latest``: the task comes from a header, the API key or the
prompt's classifier) and ``auto:<task type>`` for each task type — tags of one name, so a model
picker lists them together. They answer /api/show with a context length (the smallest num_ctx of
the endpoints: what every request is sent with), so LangChain's ``validate_model_on_init`` and
Continue's autodetect accept them.
"""
from __future__ import annotations

import datetime as dt
import hashlib

from models_registry import models as m
from models_registry.runtime.ollama import normalize_model_name

VIRTUAL = "auto"
MIB = 1024 * 1024
_EPOCH = "2025-01-01T00:00:00Z"
FOREVER_AT = "2318-01-01T00:00:00Z"  # Ollama shows keep_alive < 0 as ~292 years ahead


def parse_virtual(name: str, tasks: set[str]) -> tuple[bool, str | None]:
    """(is it a virtual model, its task type or None). ``auto:nope`` is not a model at all."""
    full = normalize_model_name(name)
    base, tag = full.rsplit(":", 1)
    if base != VIRTUAL:
        return False, None
    if tag == "latest":
        return True, None
    return (True, tag) if tag in tasks else (False, None)


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def context_length() -> int:
    """The context every request is sent with, whichever endpoint serves it."""
    values = list(m.Endpoint.objects.values_list("num_ctx", flat=True))
    return min(values) if values else 4096


def _details(family: str, parameters_b: float | None = None, quant: str = "") -> dict:
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": f"{parameters_b:.1f}B" if parameters_b else "", "quantization_level": quant}


def virtual_names() -> list[tuple[str, str | None, str]]:
    """[(name, task or None, description)]"""
    rows = [(f"{VIRTUAL}:latest", None, "TowerOps picks the model (task from the header, key or prompt)")]
    for name, desc in m.TaskType.objects.order_by("name").values_list("name", "description"):
        rows.append((f"{VIRTUAL}:{name}", name, desc or name))
    return rows


def local_models() -> list[m.LlmModel]:
    return list(m.LlmModel.objects.filter(kind="local", enabled=True).order_by("tag"))


def tags() -> dict:
    ctx = context_length()
    out = []
    for name, _, _ in virtual_names():
        out.append({"name": name, "model": name, "modified_at": _EPOCH, "size": 0, "digest": _digest(name),
                    "details": {**_details("towerops"), "context_length": ctx},
                    "capabilities": ["completion", "tools"]})
    for r in local_models():
        name = normalize_model_name(r.tag)
        out.append({"name": name, "model": name, "modified_at": _EPOCH,
                    "size": (r.file_size_mib or r.vram_mib) * MIB, "digest": _digest(name),
                    "details": _details(r.family or "llama", r.parameters_b, r.quantization)})
    return {"models": out}


def ps() -> dict:
    """Every loaded residency, as Ollama's /api/ps shows a running model (newest expiry first)."""
    rows = []
    for r in (m.Residency.objects.filter(state=m.ResidencyState.LOADED).select_related("model", "endpoint")
              .order_by("model__tag", "endpoint__name")):
        name = normalize_model_name(r.model.tag)
        forever = r.expires_at is None or r.expires_at > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=36500)
        expires = FOREVER_AT if forever else r.expires_at.isoformat().replace("+00:00", "Z")
        rows.append({"name": name, "model": name, "size": r.vram_mib * MIB, "size_vram": r.vram_mib * MIB,
                     "digest": _digest(name),
                     "details": _details(r.model.family or "llama", r.model.parameters_b, r.model.quantization),
                     "expires_at": expires, "context_length": r.endpoint.num_ctx})
    rows.sort(key=lambda x: x["expires_at"], reverse=True)
    return {"models": rows}


def show_virtual(name: str, task: str | None) -> dict:
    ctx = context_length()
    what = f"the {task} task type" if task else "whatever the request is"
    return {
        "license": "",
        "modelfile": f"# A TowerOps virtual model: the best model for {what}, chosen per request.\nFROM {name}\n"
                     f"PARAMETER num_ctx {ctx}\n",
        "parameters": f"num_ctx                        {ctx}",
        "template": "{{ .Prompt }}",
        "details": _details("towerops"),
        "model_info": {"general.architecture": "towerops", "general.parameter_count": 0,
                       "towerops.context_length": ctx, "towerops.task_type": task or "auto"},
        "capabilities": ["completion", "tools"],
        "modified_at": _EPOCH,
    }


def with_num_ctx(show: dict, num_ctx: int) -> dict:
    """A real model's /api/show with `num_ctx` set to what the gateway sends (Continue reads it)."""
    lines = [ln for ln in (show.get("parameters") or "").splitlines() if not ln.strip().startswith("num_ctx")]
    lines.append(f"num_ctx                        {num_ctx}")
    return {**show, "parameters": "\n".join(lines)}


def openai_models() -> dict:
    created = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "towerops"}
            for name, _, _ in virtual_names()]
    data += [{"id": normalize_model_name(r.tag), "object": "model", "created": created, "owned_by": "library"}
             for r in local_models()]
    return {"object": "list", "data": data}


def catalog_tag(name: str) -> str | None:
    """The catalog's tag for a model name as a client spells it (``mistral`` == ``mistral:latest``)."""
    want = normalize_model_name(name).casefold()
    for tag in m.LlmModel.objects.filter(kind="local").values_list("tag", flat=True):
        if normalize_model_name(tag).casefold() == want:
            return tag
    return None


def minimum_version() -> str:
    """The oldest Ollama version behind the gateway (clients branch on it), or the simulator's."""
    versions = [v for v in m.Endpoint.objects.filter(is_up=True).values_list("version", flat=True) if v]

    def key(v: str):
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("-")[0].split("."))

    return min(versions, key=key) if versions else "0.30.0"
