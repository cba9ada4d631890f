"""GPU telemetry: this host's GPUs read (NVML, AMD sysfs) and appended as GpuSnapshot rows."""
from __future__ import annotations

from models_registry import models as m
from models_registry import timeutil
from models_registry.runtime import collectors


def record_gpu_snapshots(host_id: int) -> int:
    """Append a GpuSnapshot for each of the host's GPUs that a reading matches. Runs on the host itself."""
    host = m.Host.objects.filter(pk=host_id).values_list("name", flat=True).first()
    readings = collectors.read_host(host) if host else []  # this machine's GPUs, or the simulated tower's
    host_gpus = list(m.Gpu.objects.filter(host_id=host_id).order_by("index"))
    by_uuid = {g.uuid: g for g in host_gpus if g.uuid}
    # A reading's index counts that vendor's GPUs only (NVML's index, the AMD card ordinal),
    # while a profile's index counts all of the host's GPUs: on the Tower (AMD 0, NVIDIA 1)
    # NVML's GPU 0 is the profile's GPU 1. So, without a uuid, match the n-th GPU of the vendor.
    by_vendor: dict[str, list[m.Gpu]] = {}
    for g in host_gpus:
        by_vendor.setdefault(g.vendor, []).append(g)
    now = timeutil.utcnow()
    rows, taken = [], set()
    for reading in readings:
        gpu = by_uuid.get(reading.uuid) if reading.uuid else None
        if gpu is None:
            same = by_vendor.get(reading.vendor, [])
            gpu = same[reading.index] if 0 <= reading.index < len(same) else None
            if gpu is not None and gpu.uuid and reading.uuid and gpu.uuid != reading.uuid:
                gpu = None  # the profile names another card by its uuid
        if gpu is None or gpu.pk in taken:
            continue
        taken.add(gpu.pk)
        rows.append(
            m.GpuSnapshot(
                gpu=gpu, taken_at=now, total_mib=reading.total_mib, used_mib=reading.used_mib,
                free_mib=reading.free_mib, util_pct=reading.util_pct, temperature_c=reading.temperature_c,
                power_w=reading.power_w,
            )
        )
    m.GpuSnapshot.objects.bulk_create(rows)
    m.Host.objects.filter(pk=host_id).update(last_seen_at=now)
    return len(rows)
