"""The simulated tower's GPUs as the real collectors read them.

The simulator (``simulate_tower --gpu-telemetry-dir DIR``) writes, about once a second, what
each simulated GPU holds, in the two shapes TowerOps' collectors read on a real host:

* AMD: a sysfs tree, ``DIR/<host>/drm/card<N>/device/`` with ``vendor`` (0x1002), ``device``,
  ``product_name``, ``uevent`` (``PCI_SLOT_NAME``), ``unique_id`` (from the profile's uuid, when
  it has one), ``mem_info_vram_total``, ``mem_info_vram_used`` (bytes) and ``gpu_busy_percent``
  (100 while a model on the card generates, else 0). ``collectors.read_amd`` reads it as it
  reads ``/sys/class/drm``.
* NVIDIA: ``DIR/<host>/nvml.json``, answered by ``FakeNvml``, which has the pynvml calls
  ``collectors.read_nvidia`` makes (memory, utilisation, name, uuid; temperature and power are
  "not supported", as on some boards).

An agent reads them instead of the machine's GPUs when ``TOWEROPS_SIMULATED_GPU_DIR`` names DIR
(``collectors.read_host``; ``runstack`` sets it for the simulator and the worker it starts). So
the demo's GPU snapshots, VRAM page and ``towerops_gpu_*`` metrics go through the collectors,
the telemetry task and the database like a real tower's.

Used memory is what the simulated Ollama runners hold on the card (models and their KV cache,
as placed by the simulator's scheduler); the profile's ``reserved_gb`` stays free (the simulated
desktop uses nothing). Files are replaced atomically (written aside, then renamed), so a reader
never sees half a value.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger("towerops.simulator")

MIB = 1024 * 1024
ENV = "TOWEROPS_SIMULATED_GPU_DIR"


def default_dir() -> str | None:
    return os.environ.get(ENV) or None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def gpu_view(tower) -> dict[str, list[dict]]:
    """{host: [{index, vendor, name, uuid, total, used, busy}]} of a SimulatedTower now (bytes)."""
    out: dict[str, list[dict]] = {}
    for host in tower.profile.hosts:
        if host.name not in tower.hosts:
            continue
        gpus = []
        for g in sorted(host.gpus, key=lambda g: g.index):
            usable = (g.total_mib - g.reserved_mib) * MIB
            used = max(0, usable - tower.gpu_free_bytes(host.name, g.index))
            gpus.append({"index": g.index, "vendor": g.vendor, "name": g.name, "uuid": g.uuid,
                         "total": g.total_mib * MIB, "used": used, "busy": tower.gpu_busy(host.name, g.index)})
        out[host.name] = gpus
    return out


def write_view(view: dict[str, list[dict]], root: Path) -> None:
    """Writes each host's GPUs under root/<host>/ (see the module docstring)."""
    for host, gpus in view.items():
        base = Path(root) / host
        amd = [g for g in gpus if g.get("vendor") == "amd"]
        for card, g in enumerate(amd):
            dev = base / "drm" / f"card{card}" / "device"
            _write(dev / "vendor", "0x1002\n")
            _write(dev / "device", "0x7550\n")
            _write(dev / "product_name", g["name"] + "\n")
            _write(dev / "uevent", f"DRIVER=amdgpu\nPCI_SLOT_NAME=0000:{card + 3:02x}:00.0\n")
            if g["uuid"]:
                _write(dev / "unique_id", g["uuid"].removeprefix("GPU-") + "\n")
            _write(dev / "mem_info_vram_total", f"{g['total']}\n")
            _write(dev / "mem_info_vram_used", f"{g['used']}\n")
            _write(dev / "gpu_busy_percent", "100\n" if g["busy"] else "0\n")
        nvidia = [{"name": g["name"], "uuid": g["uuid"] or f"GPU-simulated-{host}-{g['index']}",
                   "total": g["total"], "used": g["used"], "util": 100 if g["busy"] else 0}
                  for g in gpus if g.get("vendor") == "nvidia"]
        _write(base / "nvml.json", json.dumps({"devices": nvidia}, indent=1) + "\n")


class TelemetryWriter:
    """Writes a SimulatedTower's GPU view under `root` every `interval_s` seconds, in a thread."""

    def __init__(self, tower, root: str | os.PathLike, interval_s: float = 1.0):
        self.tower, self.root, self.interval_s = tower, Path(root), interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write_once(self) -> None:
        write_view(gpu_view(self.tower), self.root)

    def start(self) -> TelemetryWriter:
        self.write_once()
        self._thread = threading.Thread(target=self._loop, name="simulated-gpu-telemetry", daemon=True)
        self._thread.start()
        log.info("simulated GPU telemetry under %s (TOWEROPS_SIMULATED_GPU_DIR)", self.root)
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write_once()
            except OSError as exc:  # a full disk must not stop the simulator
                log.warning("simulated GPU telemetry: %s", exc)

    def stop(self) -> None:
        """Stops the thread and writes a last view (after a shutdown: nothing held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write_once()


class NVMLError(Exception):
    pass


class FakeNvml:
    """The pynvml calls collectors.read_nvidia makes, answered from a simulator's nvml.json."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2 = 2

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._devices: list[dict] | None = None

    def nvmlInit(self) -> None:
        try:
            self._devices = json.loads(self.path.read_text())["devices"]
        except (OSError, ValueError, KeyError) as exc:
            raise NVMLError(f"no simulated NVML at {self.path}: {exc}") from exc

    def nvmlShutdown(self) -> None:
        self._devices = None

    def _device(self, handle: int) -> dict:
        if self._devices is None:
            raise NVMLError("NVML not initialised")
        return self._devices[handle]

    def nvmlDeviceGetCount(self) -> int:
        return len(self._devices or ())

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._device(i)
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None):
        d = self._device(handle)
        return SimpleNamespace(total=d["total"], used=d["used"], free=d["total"] - d["used"])

    def nvmlDeviceGetUtilizationRates(self, handle: int):
        return SimpleNamespace(gpu=self._device(handle)["util"], memory=0)

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._device(handle)["name"]

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._device(handle)["uuid"]

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int):
        raise NVMLError("Not Supported")

    def nvmlDeviceGetPowerUsage(self, handle: int):
        raise NVMLError("Not Supported")
