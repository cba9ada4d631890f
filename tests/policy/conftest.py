"""Fixtures for the decision core's unit tests: the Tower profile as a World, and helpers
to put residents on it. Plain objects, no database."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so these tests also run with `-p no:django`
    sys.path.insert(0, str(ROOT))

from models_registry.policy import ResidentView, World  # noqa: E402

NOW = 1_800_000_000.0  # a fixed "now"; the policy never reads a clock


class TowerBuilder:
    """Builds Worlds from profiles/tower.yaml with the residents a test wants."""

    def __init__(self, profile):
        self.profile = profile
        self.base = profile.to_world(now=NOW)
        self.models = {m.tag: m for m in self.base.models}
        self.endpoints = {e.key: e for e in self.base.endpoints}
        # the seed's Tower: the AMD endpoint and the NVIDIA endpoint
        self.amd = next(e.key for e in self.base.endpoints if "amd" in e.key)
        self.nvidia = next(e.key for e in self.base.endpoints if "nvidia" in e.key)

    def res(self, tag: str, endpoint: str | None = None, state: str = "loaded", *,
            used_ago: float | None = 60.0, **kw) -> ResidentView:
        """A resident of ``tag`` on the endpoint's first GPU (default: tower-nvidia)."""
        endpoint = endpoint or self.nvidia
        gpu = self.endpoints[endpoint].gpus[0]
        if "last_used_at" not in kw:
            kw["last_used_at"] = None if used_ago is None else NOW - used_ago
        return ResidentView(model=tag, endpoint=endpoint,
                            vram_by_gpu=((gpu, self.models[tag].vram_mib),), state=state, **kw)

    def world(self, *residents: ResidentView, down: tuple[str, ...] = (), now: float = NOW,
              **params) -> World:
        w = self.profile.to_world(now=now, residents=tuple(residents))
        if down:
            w = replace(w, endpoints=tuple(replace(e, up=e.key not in down) for e in w.endpoints))
        if params:
            w = replace(w, params=replace(w.params, **params))
        return w

    def gpu_of(self, endpoint: str) -> str:
        return self.endpoints[endpoint].gpus[0]


@pytest.fixture(scope="session")
def tower_profile():
    from models_registry.catalog.profile import load_profile_file

    return load_profile_file(ROOT / "profiles" / "tower.yaml")


@pytest.fixture(scope="session")
def tower(tower_profile) -> TowerBuilder:
    return TowerBuilder(tower_profile)


@pytest.fixture
def tower_world(tower) -> World:
    """The seed's Tower with llama3.2:3b loaded on the RTX 3060 (used a minute ago)."""
    return tower.world(tower.res("llama3.2:3b", tower.nvidia))
