"""What-if profiles: the same trace on a changed profile, compared side by side.

A what-if file is either a whole profile (a YAML mapping with ``hosts``/``models``/...,
validated as any profile) or a *patch* on the base profile (``--profile``)::

    name: add a 24 GB GPU            # the column's label (default: the file's name)
    changes:                         # merged into the base profile's YAML, then validated
      hosts:
        - name: tower                # an item with the same key is merged into that item,
          gpus:                      # an item with a new key is appended
            - {index: 2, vendor: nvidia, name: GeForce RTX 3090, total_gb: 24}
          endpoints:
            - {name: tower-3090, base_url: "http://127.0.0.1:11436", gpus: [2], keep_alive: -1m}
      task_types:
        - {name: code_generation, quality_floor: 0.85}   # raise a floor
      models:
        - {tag: "mistral:7b", enabled: false}            # disable a model
        - {tag: tinyllama, remove: true}                 # or drop it from the catalog
    truth:                           # optional: the models' true quality, hidden from the policy
      mode: active                   # active | shadow | oracle (replay/learning.py)
      quality:                       # outcomes are drawn from these; towerops learns them
        - {model: "llama3.2:3b", task_type: chat, quality: 0.74}
        - {model: "mistral:7b", task_type: chat, quality: 0.93}

Merge rules: mappings merge key by key; a list of mappings merges item by item on its key
field (``tag`` in ``models``, ``index`` in ``gpus``, ``name`` elsewhere): a matching item
is merged into, ``remove: true`` deletes it, a new key is appended; any other value
(a number, a string, a list of plain values such as a window's ``models``) replaces the
base's. The result is validated like any profile: a bad patch is an error naming the file
and the field.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from models_registry.catalog.profile import Profile, ProfileError, parse_profile

from .learning import HiddenTruth

KEY_FIELDS = {"models": "tag", "gpus": "index"}
PROFILE_KEYS = {"version", "hosts", "task_types", "urgency_classes", "models", "preload_windows", "policy"}


def _read_yaml(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(str(path), "", f"cannot read the {what}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProfileError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None


def merge(base, change, source: str, path: str, list_name: str = ""):
    """``change`` merged into a copy of ``base`` (the rules in the module docstring)."""
    if isinstance(base, dict) and isinstance(change, dict):
        out = dict(base)
        for k, v in change.items():
            out[k] = merge(base[k], v, source, f"{path}.{k}" if path else str(k), str(k)) if k in base else v
        return out
    if (isinstance(base, list) and isinstance(change, list) and change
            and all(isinstance(x, dict) for x in change) and all(isinstance(x, dict) for x in base)):
        key = KEY_FIELDS.get(list_name, "name")
        out = [copy.deepcopy(x) for x in base]
        for i, item in enumerate(change):
            where = f"{path}[{i}]"
            if key not in item:
                raise ProfileError(source, where, f"a change to {list_name or 'a list'} names its item by {key!r}")
            hit = next((j for j, x in enumerate(out) if x.get(key) == item[key]), None)
            rest = {k: v for k, v in item.items() if k != "remove"}
            if item.get("remove"):
                if hit is None:
                    raise ProfileError(source, where, f"nothing to remove: no {key} {item[key]!r} in the base profile")
                del out[hit]
            elif hit is None:
                out.append(rest)
            else:
                out[hit] = merge(out[hit], rest, source, where, list_name)
        return out
    return copy.deepcopy(change)


def load_what_if(path: str | Path, base_data: dict, base_source: str) -> tuple[str, Profile, dict]:
    """(label, profile, description) of one what-if file on the base profile's YAML data."""
    path = Path(path)
    data = _read_yaml(path, "what-if file")
    if not isinstance(data, dict):
        raise ProfileError(str(path), "", "a what-if file is a profile, or a mapping with name and changes")
    if "changes" in data or "truth" in data:
        extra = set(data) - {"name", "description", "changes", "truth"}
        if extra:
            raise ProfileError(str(path), sorted(extra)[0],
                               "unknown field (a patch has name, description, changes, truth)")
        changes = data.get("changes", {})
        if not isinstance(changes, dict):
            raise ProfileError(str(path), "changes", "a mapping of profile sections to change")
        unknown = set(changes) - PROFILE_KEYS
        if unknown:
            raise ProfileError(str(path), f"changes.{sorted(unknown)[0]}",
                               f"not a profile section (sections: {', '.join(sorted(PROFILE_KEYS))})")
        merged = merge(base_data, changes, str(path), "changes")
        profile = parse_profile(merged, f"{path} (on {base_source})")
        label = str(data.get("name") or path.stem)
        desc = {"file": str(path), "kind": "patch", "name": label, "description": data.get("description", ""),
                "changes": changes}
        if "truth" in data:
            hidden_truth(data["truth"], profile, str(path))  # checked now: a bad field is named before any run
            desc["truth"] = data["truth"]
        return label, profile, desc
    profile = parse_profile(data, str(path))
    return path.stem, profile, {"file": str(path), "kind": "profile", "name": path.stem}


def load_base(path: str | Path) -> tuple[dict, Profile]:
    """The base profile's YAML data (what patches apply to) and its validated Profile."""
    path = Path(path)
    data = _read_yaml(path, "profile")
    return data, parse_profile(data, str(path))


def hidden_truth(data, profile: Profile, source: str) -> HiddenTruth:
    """A what-if's ``truth:`` (replay/learning.py): the models' true quality, hidden from the policy,
    learned by the towerops policy from ratings drawn from it. Every model and task type it names
    must be in the profile."""
    try:
        truth = HiddenTruth.parse(data, "truth")
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ProfileError(source, field, message) from None
    tags = {m.tag for m in profile.models}
    tasks = {t.name for t in profile.task_types}
    for i, (tag, task) in enumerate(truth.quality):
        if tag not in tags:
            raise ProfileError(source, f"truth.quality[{i}].model", f"no model {tag!r} in the profile")
        if task not in tasks:
            raise ProfileError(source, f"truth.quality[{i}].task_type", f"no task type {task!r} in the profile")
    return truth
