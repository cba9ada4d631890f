"""The NVML collector against a real NVIDIA GPU, checked against nvidia-smi.

Skipped where there is no NVIDIA GPU (CI, most laptops). Django-free on purpose, so it also
runs on a bare GPU machine:

    python3 -m pytest -c /dev/null --noconftest -p no:cacheprovider tests/gpu -v -s

The unit tests (tests/unit/test_collectors.py) fake the bindings; this file is what shows the
collector reads what the driver reports: the same GPUs, names, uuids and totals as nvidia-smi,
and used memory that follows a real allocation.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from models_registry.runtime import collectors


def _nvidia_smi() -> list[dict]:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.used",
         "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        index, uuid, name, total, used = (part.strip() for part in line.split(","))
        rows.append(dict(index=int(index), uuid=uuid, name=name, total_mib=int(total), used_mib=int(used)))
    return rows


def _have_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return bool(_nvidia_smi())
    except (subprocess.SubprocessError, OSError, ValueError):
        return False


pytestmark = pytest.mark.skipif(not _have_nvidia_gpu(), reason="no NVIDIA GPU (nvidia-smi lists none)")


def test_nvml_reads_the_gpus_nvidia_smi_lists():
    smi = _nvidia_smi()
    started = time.perf_counter()
    readings = collectors.read_nvidia()
    took_ms = (time.perf_counter() - started) * 1000
    print(f"\nread_nvidia(): {len(readings)} GPU(s) in {took_ms:.1f} ms")
    for r in readings:
        print(f"  {r}")
    assert [r.index for r in readings] == [row["index"] for row in smi]
    for r, row in zip(readings, smi):
        assert r.vendor == "nvidia"
        assert r.uuid == row["uuid"]
        assert r.name == row["name"]
        assert r.total_mib == row["total_mib"]
        # Both read the same counter a moment apart; other processes may allocate in between.
        assert abs(r.used_mib - row["used_mib"]) <= 256, (r.used_mib, row["used_mib"])
        assert r.free_mib <= r.total_mib and r.used_mib <= r.total_mib
        assert r.util_pct is None or 0 <= r.util_pct <= 100
        assert r.temperature_c is None or 0 < r.temperature_c < 120
        assert r.power_w is None or 0 < r.power_w < 2000


def test_read_all_reports_the_nvidia_gpus_and_no_amd_card():
    readings = collectors.read_all()
    nvidia = [r for r in readings if r.vendor == "nvidia"]
    assert len(nvidia) == len(_nvidia_smi())
    assert [r for r in readings if r.vendor == "amd"] == []


def test_used_memory_follows_a_real_allocation():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the CUDA context itself takes a few hundred MiB; count it first
    torch.cuda.synchronize()
    before = collectors.read_nvidia()[0].used_mib
    size_mib = 4096
    block = torch.empty(size_mib * collectors.MIB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    during = collectors.read_nvidia()[0].used_mib
    del block
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    after = collectors.read_nvidia()[0].used_mib
    print(f"\nused MiB: before {before}, with {size_mib} MiB allocated {during}, freed {after}")
    # The allocator rounds up to its 2 MiB pages; allow that and some driver bookkeeping.
    assert size_mib - 64 <= during - before <= size_mib + 256
    assert abs(after - before) <= 64
