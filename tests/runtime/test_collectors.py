"""GPU collectors: NVML faked at the binding boundary (sys.modules['pynvml']), AMD on a fake sysfs."""
from __future__ import annotations

import sys
import types

import pytest

from models_registry.runtime import collectors
from models_registry.runtime.collectors import (
    GpuReading,
    read_all,
    read_amd,
    read_nvidia,
)

MIB = 1024 * 1024


# --------------------------------------------------------------------------- fake NVML


class FakeNVMLError(Exception):
    pass


class FakeLibraryNotFound(FakeNVMLError):
    pass


def fake_pynvml(gpus: list[dict], *, init_error: Exception | None = None, memory_v2: bool = True,
                driver_has_v2: bool = True) -> types.ModuleType:
    """A stand-in for nvidia-ml-py's ``pynvml`` with the calls the collector makes.

    A GPU's ``reserved`` bytes (the driver's own) count as used in the version-1 memory info
    and apart in version 2, as on a real H100 (tests/gpu/test_nvml_real.py)."""
    mod = types.ModuleType("pynvml")
    state = {"init": 0, "shutdown": 0}
    mod.state = state
    mod.NVMLError = FakeNVMLError
    mod.NVML_TEMPERATURE_GPU = 0

    def init():
        if init_error is not None:
            raise init_error
        state["init"] += 1

    def shutdown():
        state["shutdown"] += 1

    def field(handle, key):
        value = gpus[handle][key]
        if isinstance(value, Exception):
            raise value
        return value

    mod.nvmlInit = init
    mod.nvmlShutdown = shutdown
    mod.nvmlDeviceGetCount = lambda: len(gpus)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    if memory_v2:
        mod.nvmlMemory_v2 = 0x02000028

    def memory_info(h, version=None):
        g = gpus[h]
        reserved = g.get("reserved", 0)
        free = g["total"] - g["used"] - reserved
        if version is None:
            return types.SimpleNamespace(total=g["total"], used=g["used"] + reserved, free=free)
        assert version == 0x02000028
        if not driver_has_v2:
            raise FakeNVMLError("Function Not Found")
        return types.SimpleNamespace(version=version, total=g["total"], reserved=reserved, free=free, used=g["used"])

    mod.nvmlDeviceGetMemoryInfo = memory_info
    mod.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=field(h, "util"), memory=10)

    def temperature(h, sensor):
        assert sensor == 0
        return field(h, "temp")

    mod.nvmlDeviceGetTemperature = temperature
    mod.nvmlDeviceGetPowerUsage = lambda h: field(h, "power_mw")
    mod.nvmlDeviceGetName = lambda h: gpus[h]["name"]
    mod.nvmlDeviceGetUUID = lambda h: gpus[h]["uuid"]
    return mod


RTX3060 = dict(name="NVIDIA GeForce RTX 3060", uuid="GPU-1111", total=12288 * MIB, used=3524 * MIB,
               util=37, temp=61, power_mw=95_500)


def test_nvml_reads_every_gpu(monkeypatch):
    second = dict(RTX3060, name=b"NVIDIA RTX A4000", uuid=b"GPU-2222", total=16376 * MIB, used=0,
                  util=0, temp=40, power_mw=FakeNVMLError("Not Supported"))
    fake = fake_pynvml([RTX3060, second])
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    readings = read_nvidia()

    assert readings == [
        GpuReading(index=0, uuid="GPU-1111", vendor="nvidia", name="NVIDIA GeForce RTX 3060", total_mib=12288,
                   used_mib=3524, free_mib=8764, util_pct=37.0, temperature_c=61.0, power_w=95.5),
        GpuReading(index=1, uuid="GPU-2222", vendor="nvidia", name="NVIDIA RTX A4000", total_mib=16376,
                   used_mib=0, free_mib=16376, util_pct=0.0, temperature_c=40.0, power_w=None),
    ]
    assert fake.state == {"init": 1, "shutdown": 1}


H100_IDLE = dict(name="NVIDIA H100 80GB HBM3", uuid="GPU-660c", total=81559 * MIB, used=0, reserved=480 * MIB,
                 util=0, temp=33, power_mw=71_661)


def test_nvml_used_leaves_out_the_drivers_reservation(monkeypatch):
    """An idle H100: nvidia-smi says 0 MiB used, NVML's v1 call says 480. The collector reports 0."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([H100_IDLE]))
    [reading] = read_nvidia()
    assert (reading.total_mib, reading.used_mib, reading.free_mib) == (81559, 0, 81079)


@pytest.mark.parametrize("bindings_have_v2, driver_has_v2", [(False, True), (True, False)])
def test_nvml_falls_back_to_the_version_1_memory_call(monkeypatch, bindings_have_v2, driver_has_v2):
    fake = fake_pynvml([H100_IDLE], memory_v2=bindings_have_v2, driver_has_v2=driver_has_v2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    [reading] = read_nvidia()
    # Version 1 counts the reservation as used; free is the same either way.
    assert (reading.used_mib, reading.free_mib) == (480, 81079)


def test_nvml_library_missing_returns_empty(monkeypatch):
    fake = fake_pynvml([RTX3060], init_error=FakeLibraryNotFound("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_nvidia() == []


def test_nvml_bindings_not_installed_returns_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert read_nvidia() == []


def test_nvml_gpu_that_fails_is_skipped_not_fatal(monkeypatch):
    broken = dict(RTX3060, uuid="GPU-dead")
    fake = fake_pynvml([broken, RTX3060])

    def memory(h, version=None):
        if h == 0:
            raise FakeNVMLError("GPU is lost")
        return types.SimpleNamespace(total=RTX3060["total"], used=RTX3060["used"],
                                     free=RTX3060["total"] - RTX3060["used"])

    fake.nvmlDeviceGetMemoryInfo = memory
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    readings = read_nvidia()
    assert [r.uuid for r in readings] == ["GPU-1111"]
    assert fake.state["shutdown"] == 1


def test_nvml_count_error_returns_empty_and_shuts_down(monkeypatch):
    fake = fake_pynvml([RTX3060])

    def count():
        raise FakeNVMLError("Unknown Error")

    fake.nvmlDeviceGetCount = count
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_nvidia() == []
    assert fake.state["shutdown"] == 1


# --------------------------------------------------------------------------- fake sysfs


def make_card(root, n, *, vendor="0x1002", total=None, used=None, busy=None, temp=None, power=None,
              power_file="power1_average", product=None, unique=None, device_id="0x7550", slot=None):
    dev = root / f"card{n}" / "device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "device").write_text(device_id + "\n")
    if total is not None:
        (dev / "mem_info_vram_total").write_text(f"{total}\n")
    if used is not None:
        (dev / "mem_info_vram_used").write_text(f"{used}\n")
    if busy is not None:
        (dev / "gpu_busy_percent").write_text(f"{busy}\n")
    if product:
        (dev / "product_name").write_text(product + "\n")
    if unique:
        (dev / "unique_id").write_text(unique + "\n")
    if slot:
        (dev / "uevent").write_text(f"DRIVER=amdgpu\nPCI_SLOT_NAME={slot}\n")
    if temp is not None or power is not None:
        hw = dev / "hwmon" / "hwmon3"
        hw.mkdir(parents=True)
        if temp is not None:
            (hw / "temp1_input").write_text(f"{temp}\n")
        if power is not None:
            (hw / power_file).write_text(f"{power}\n")
    return dev


def test_amd_sysfs_reads_amd_cards_and_skips_others(tmp_path):
    make_card(tmp_path, 0, total=16304 * MIB, used=1024 * MIB, busy=12, temp=48000, power=31_000_000,
              product="AMD Radeon RX 9070 XT", unique="1a2b3c4d5e6f7081", slot="0000:03:00.0")
    make_card(tmp_path, 1, vendor="0x10de", total=12288 * MIB, used=0)  # NVIDIA: not ours
    make_card(tmp_path, 2, total=8176 * MIB, used=8000 * MIB, slot="0000:0a:00.0",
              temp=71500, power=150_250_000, power_file="power1_input")  # newer kernels: power1_input
    (tmp_path / "card0-DP-1").mkdir()  # a connector, not a card
    (tmp_path / "renderD128").mkdir()
    (tmp_path / "version").write_text("drm 1.1.0\n")

    readings = read_amd(tmp_path)

    assert readings == [
        GpuReading(index=0, uuid="GPU-1a2b3c4d5e6f7081", vendor="amd", name="AMD Radeon RX 9070 XT",
                   total_mib=16304, used_mib=1024, free_mib=15280, util_pct=12.0, temperature_c=48.0,
                   power_w=31.0),
        GpuReading(index=1, uuid="0000:0a:00.0", vendor="amd", name="AMD GPU 0x7550", total_mib=8176,
                   used_mib=8000, free_mib=176, util_pct=None, temperature_c=71.5, power_w=150.25),
    ]


def test_amd_card_without_vram_files_or_with_other_driver_is_skipped(tmp_path):
    make_card(tmp_path, 0)  # an AMD card without mem_info_* (e.g. a display-only function)
    dev = make_card(tmp_path, 1, total=4096 * MIB, used=0)
    drivers = tmp_path / "drivers" / "radeon"
    drivers.mkdir(parents=True)
    (dev / "driver").symlink_to(drivers)
    assert read_amd(tmp_path) == []


def test_amd_card_with_amdgpu_driver_link_is_read(tmp_path):
    dev = make_card(tmp_path, 0, total=4096 * MIB, used=512 * MIB)
    drivers = tmp_path / "drivers" / "amdgpu"
    drivers.mkdir(parents=True)
    (dev / "driver").symlink_to(drivers)
    (reading,) = read_amd(tmp_path)
    assert (reading.total_mib, reading.used_mib, reading.free_mib) == (4096, 512, 3584)


def test_amd_missing_sysfs_returns_empty(tmp_path):
    assert read_amd(tmp_path / "no-such-dir") == []
    assert read_amd(tmp_path) == []


def test_read_all_on_a_host_without_gpus(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert read_all(tmp_path) == []


def test_read_all_combines_nvidia_and_amd(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([RTX3060]))
    make_card(tmp_path, 0, total=16304 * MIB, used=0, product="AMD Radeon RX 9070 XT")
    readings = read_all(tmp_path)
    assert [(r.vendor, r.name) for r in readings] == [
        ("nvidia", "NVIDIA GeForce RTX 3060"), ("amd", "AMD Radeon RX 9070 XT")]


def test_read_all_survives_a_reader_that_raises(tmp_path, monkeypatch):
    def boom():
        raise RuntimeError("unexpected")

    monkeypatch.setattr(collectors, "read_nvidia", boom)
    make_card(tmp_path, 0, total=1024 * MIB, used=0)
    assert [r.vendor for r in read_all(tmp_path)] == ["amd"]


@pytest.mark.parametrize("name", [b"bytes name", "str name"])
def test_nvml_name_bytes_or_str(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([dict(RTX3060, name=name)]))
    expected = name.decode() if isinstance(name, bytes) else name
    assert read_nvidia()[0].name == expected
