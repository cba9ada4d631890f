"""GPU telemetry of the machine this runs on: NVIDIA through NVML, AMD through sysfs.

``read_nvidia()``, ``read_amd(sysfs_root)`` and ``read_all()`` return plain ``GpuReading``s and
never raise: a host without GPUs, drivers or the NVML library reports ``[]``. A value a device
does not expose (power on some boards, temperature without hwmon) is ``None``; the GPU still
counts. Memory is in MiB (2**20 bytes). Pure Python, no Django: a Celery task on the host's own
queue calls ``read_all()`` and stores the readings.

NVIDIA: ``pynvml`` (package nvidia-ml-py) is imported inside ``read_nvidia`` so that importing
this module never needs it. Memory comes from NVML's version-2 call, whose ``used`` leaves out the
driver's reservation, as nvidia-smi does. ``index`` is NVML's index (the CUDA order unless
CUDA_DEVICE_ORDER differs), ``uuid`` NVML's ``GPU-...``.

AMD: ``/sys/class/drm/card<N>/device`` with ``vendor`` 0x1002 (``cardN-<connector>`` entries are
skipped; a ``driver`` link other than amdgpu is skipped); ``mem_info_vram_total`` /
``mem_info_vram_used`` (bytes, all consumers included), ``gpu_busy_percent``,
``hwmon/hwmon*/temp1_input`` (millidegrees C) and ``power1_average`` (or ``power1_input`` on
newer kernels; microwatts). ``index`` counts AMD cards in card-number order (ROCm's usual
ordinal), ``uuid`` is ``GPU-<unique_id>`` when the board exposes ``unique_id``, else the PCI slot.
The name is ``product_name`` when the driver provides it, else ``AMD GPU <device id>``.

Simulated hosts: where ``TOWEROPS_SIMULATED_GPU_DIR`` is set (the simulator's processes: runstack
sets it), ``read_host(name)`` reads the simulated tower's GPUs instead of this machine's, through
the same two readers: a sysfs tree under ``DIR/<host>/drm`` and a fake NVML answering from
``DIR/<host>/nvml.json``, both written by the simulator (models_registry/fakes/gpu_telemetry.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("towerops.collectors")

MIB = 1024 * 1024
AMD_VENDOR_ID = "0x1002"


@dataclasses.dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    vendor: str  # "nvidia" | "amd"
    name: str
    total_mib: int
    used_mib: int
    free_mib: int
    util_pct: float | None
    temperature_c: float | None
    power_w: float | None


# --------------------------------------------------------------------------- NVIDIA


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_nvidia(nvml=None) -> list[GpuReading]:
    """Every NVIDIA GPU through NVML (the pynvml module, or `nvml` with the same calls); [] when the
    library, the driver or the GPUs are missing."""
    if nvml is not None:
        pynvml = nvml
    else:
        try:
            import pynvml  # nvidia-ml-py
        except Exception as exc:  # ImportError, or a broken install
            log.debug("NVML bindings not available: %s", exc)
            return []
    nvml_error = getattr(pynvml, "NVMLError", Exception)
    if not (isinstance(nvml_error, type) and issubclass(nvml_error, BaseException)):
        nvml_error = Exception
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML unavailable: %s", exc)
        return []
    readings: list[GpuReading] = []
    try:
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            try:
                readings.append(_read_nvidia_device(pynvml, i, nvml_error))
            except Exception as exc:  # a GPU that fell off the bus must not hide the others
                log.warning("NVML: GPU %d unreadable: %s", i, exc)
    except Exception as exc:
        log.warning("NVML: cannot enumerate GPUs: %s", exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return readings


def _read_nvidia_device(pynvml, i: int, nvml_error) -> GpuReading:
    handle = pynvml.nvmlDeviceGetHandleByIndex(i)
    mem = _memory_info(pynvml, handle, nvml_error)  # bytes

    def optional(fn, *args):
        try:
            return fn(*args)
        except nvml_error:  # NVML_ERROR_NOT_SUPPORTED and friends
            return None

    util = optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
    temp = optional(pynvml.nvmlDeviceGetTemperature, handle, getattr(pynvml, "NVML_TEMPERATURE_GPU", 0))
    power_mw = optional(pynvml.nvmlDeviceGetPowerUsage, handle)
    name = optional(pynvml.nvmlDeviceGetName, handle)
    uuid = optional(pynvml.nvmlDeviceGetUUID, handle)
    total, used = int(mem.total), int(mem.used)
    free = int(getattr(mem, "free", total - used))
    return GpuReading(
        index=i,
        uuid=_text(uuid) if uuid is not None else "",
        vendor="nvidia",
        name=_text(name) if name is not None else f"NVIDIA GPU {i}",
        total_mib=total // MIB,
        used_mib=used // MIB,
        free_mib=free // MIB,
        util_pct=float(util.gpu) if util is not None else None,
        temperature_c=float(temp) if temp is not None else None,
        power_w=power_mw / 1000.0 if power_mw is not None else None,
    )


def _memory_info(pynvml, handle, nvml_error):
    """NVML's memory info, version 2 where the driver has it.

    Version 1 counts the driver's own reservation as used: an idle H100 reads 480 MiB used
    where nvidia-smi says 0 (seen on a real one, tests/gpu). Version 2 reports that reservation
    apart, so ``used`` is what processes hold, as nvidia-smi shows it; ``free`` is the same in both.
    """
    v2 = getattr(pynvml, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle, version=v2)
        except (nvml_error, TypeError):  # a driver before R510 lacks the v2 call
            pass
    return pynvml.nvmlDeviceGetMemoryInfo(handle)


# --------------------------------------------------------------------------- AMD


_CARD_RE = re.compile(r"^card(\d+)$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _hwmon_value(device: Path, names: tuple[str, ...]) -> int | None:
    hwmon = device / "hwmon"
    try:
        dirs = sorted(p for p in hwmon.iterdir() if p.name.startswith("hwmon"))
    except OSError:
        return None
    for d in dirs:
        for name in names:
            value = _read_int(d / name)
            if value is not None:
                return value
    return None


def read_amd(sysfs_root: str | os.PathLike = "/sys/class/drm") -> list[GpuReading]:
    """Every AMD GPU (vendor 0x1002) under ``sysfs_root``; [] when there is none or no sysfs."""
    root = Path(sysfs_root)
    try:
        cards = sorted(
            ((int(m.group(1)), p) for p in root.iterdir() if (m := _CARD_RE.match(p.name))),
            key=lambda x: x[0],
        )
    except OSError:
        return []
    readings: list[GpuReading] = []
    for _, card in cards:
        try:
            reading = _read_amd_card(card / "device", len(readings))
        except Exception as exc:  # never let one odd card break telemetry
            log.warning("sysfs: %s unreadable: %s", card, exc)
            continue
        if reading is not None:
            readings.append(reading)
    return readings


def _read_amd_card(device: Path, index: int) -> GpuReading | None:
    if (_read(device / "vendor") or "").lower() != AMD_VENDOR_ID:
        return None
    driver = device / "driver"
    if driver.is_symlink() and os.path.basename(os.path.realpath(driver)) != "amdgpu":
        return None
    total = _read_int(device / "mem_info_vram_total")
    used = _read_int(device / "mem_info_vram_used")
    if total is None:
        return None
    used = used or 0
    busy = _read_int(device / "gpu_busy_percent")
    temp = _hwmon_value(device, ("temp1_input",))
    power = _hwmon_value(device, ("power1_average", "power1_input"))
    unique = _read(device / "unique_id")
    if unique:
        uuid = f"GPU-{unique}"
    else:
        uevent = _read(device / "uevent") or ""
        slot = next((line.split("=", 1)[1] for line in uevent.splitlines() if line.startswith("PCI_SLOT_NAME=")), "")
        uuid = slot or os.path.basename(os.path.realpath(device))
    name = _read(device / "product_name")
    if not name:
        dev_id = _read(device / "device") or "?"
        name = f"AMD GPU {dev_id}"
    return GpuReading(
        index=index,
        uuid=uuid,
        vendor="amd",
        name=name,
        total_mib=total // MIB,
        used_mib=used // MIB,
        free_mib=max(0, total - used) // MIB,
        util_pct=float(busy) if busy is not None else None,
        temperature_c=temp / 1000.0 if temp is not None else None,
        power_w=power / 1_000_000.0 if power is not None else None,
    )


# --------------------------------------------------------------------------- both


def read_all(sysfs_root: str | os.PathLike = "/sys/class/drm", nvml=None) -> list[GpuReading]:
    """NVIDIA then AMD readings of this machine; [] on a host without GPUs. Never raises."""
    readings: list[GpuReading] = []
    for reader, args in ((read_nvidia, (nvml,)), (read_amd, (sysfs_root,))):
        try:
            readings.extend(reader(*args))
        except Exception as exc:  # belt and braces: the readers already swallow their errors
            log.warning("GPU reader %s failed: %s", reader.__name__, exc)
    return readings


SIMULATED_GPU_DIR = "TOWEROPS_SIMULATED_GPU_DIR"


def read_host(host: str) -> list[GpuReading]:
    """The GPUs of `host`, which an agent runs on: this machine's (``read_all``), or the simulated
    host's where TOWEROPS_SIMULATED_GPU_DIR is set (see the module docstring)."""
    simulated = os.environ.get(SIMULATED_GPU_DIR)
    if not simulated:
        return read_all()
    from models_registry.fakes.gpu_telemetry import FakeNvml

    root = Path(simulated) / host
    return read_all(root / "drm", nvml=FakeNvml(root / "nvml.json"))
