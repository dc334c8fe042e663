"""What NVML sees: device memory and per-process use, devices in CUDA's order, degraded cases made explicit.

Two layers. `read_raw()` is the only code that calls NVML (`pynvml`, from nvidia-ml-py); it returns a
plain dict, the *raw sample* (schema below), which is also the format of the recorded samples in
`tests/fixtures/nvml/`. `parse()` turns a raw sample into a `Snapshot`; everything after it is pure.

Raw sample: {"unit": "B" | "MiB", "driver_version": str, "wsl": bool,
             "devices": [{"index": int, "uuid": str, "name": str, "mig": bool,
                          "memory": {"total": n, "reserved": n | null, "used": n, "free": n},
                          "processes": [{"pid": int, "used": n | null, "in_namespace": bool}] | null,
                          "processes_error": str (only with "processes": null)}]}
`reserved` is null where only NVML's v1 memory query exists (drivers before R510); a process's `used` is
null where NVML cannot say (WDDM, WSL's GPU-PV); `in_namespace` is false for a PID that does not exist
in this PID namespace (NVML reports host PIDs inside containers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MiB = 1 << 20
_UNITS = {"B": 1, "MiB": MiB}


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no library, no driver, no device); the message says which."""


@dataclass(frozen=True)
class Memory:
    total: int
    reserved: int | None  # driver/firmware-reserved; None: v1 query only (then `used` includes it)
    used: int  # allocated by processes (v2: excludes `reserved`)
    free: int


@dataclass(frozen=True)
class ProcessUse:
    pid: int
    used: int | None  # None: NVML cannot report it on this platform
    in_namespace: bool


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index (PCI bus order)
    uuid: str  # "GPU-..." or, for a MIG instance, "MIG-..."
    name: str
    mig: bool
    memory: Memory
    processes: tuple[ProcessUse, ...] | None  # None: per-process query failed (`processes_note` says why)
    processes_note: str = ""


@dataclass(frozen=True)
class Snapshot:
    driver_version: str
    wsl: bool
    gpus: tuple[Gpu, ...]

    def per_process_problem(self, gpu: Gpu) -> str:
        """Why per-process use cannot be trusted on `gpu` (empty when it can)."""
        if gpu.processes is None:
            return f"per-process use unavailable: {gpu.processes_note}"
        if any(p.used is None for p in gpu.processes):
            where = "WSL (GPU-PV)" if self.wsl else "this driver model (WDDM)"
            return (f"per-process use unavailable on {where}: the Windows display driver does not report "
                    "per-process memory to NVML")
        if any(not p.in_namespace for p in gpu.processes):
            return ("processes not visible: NVML reports PIDs of another PID namespace (a container without "
                    "--pid=host); using the device's memory instead")
        return ""


def parse(raw: dict) -> Snapshot:
    scale = _UNITS[raw.get("unit", "B")]
    gpus = []
    for d in raw["devices"]:
        m = d["memory"]
        reserved = None if m.get("reserved") is None else m["reserved"] * scale
        procs = d.get("processes")
        gpus.append(Gpu(
            index=d["index"], uuid=d["uuid"], name=d["name"], mig=bool(d.get("mig")),
            memory=Memory(m["total"] * scale, reserved, m["used"] * scale, m["free"] * scale),
            processes=None if procs is None else tuple(
                ProcessUse(p["pid"], None if p.get("used") is None else p["used"] * scale,
                           p.get("in_namespace", True))
                for p in procs
            ),
            processes_note=d.get("processes_error", ""),
        ))
    return Snapshot(raw.get("driver_version", ""), bool(raw.get("wsl")), tuple(gpus))


def cuda_order(gpus: tuple[Gpu, ...], visible: str | None, device_order: str | None = None) -> tuple[list[Gpu], str]:
    """The devices a process with CUDA_VISIBLE_DEVICES=`visible` sees, in its CUDA order, and a note.

    As CUDA parses it: comma-separated entries, each an index, a `GPU-` UUID prefix or a `MIG-` UUID;
    parsing stops at the first entry that names no device (or is ambiguous); unset means every
    non-MIG device. Indices follow NVML's PCI order only with CUDA_DEVICE_ORDER=PCI_BUS_ID or identical
    devices (CUDA's default FASTEST_FIRST breaks ties by PCI bus), so a mixed machine gets a note."""
    whole = [g for g in gpus if not g.mig]
    note = ""
    if device_order != "PCI_BUS_ID" and len({g.name for g in whole}) > 1:
        note = "mixed GPUs without CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA's indices may not follow NVML's"
    if visible is None:
        return whole, note
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            match = [whole[int(entry)]] if int(entry) < len(whole) else []
        else:
            match = [g for g in gpus if entry and g.uuid.startswith(entry)]
        if len(match) != 1 or match[0] in chosen:
            break
        chosen.append(match[0])
    return chosen, note


def read_raw() -> dict:
    """A raw sample of this machine, through NVML. Raises NvmlUnavailable with the reason."""
    try:
        import pynvml  # optional: its absence is a reason, not an error
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py (pynvml) is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise NvmlUnavailable(f"no NVIDIA driver: NVML could not start ({error})") from None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise NvmlUnavailable("NVML found no NVIDIA GPU")
        devices = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            devices.extend(_read_device(pynvml, handle, index))
        return {"unit": "B", "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
                "wsl": _is_wsl(), "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def _read_device(pynvml, handle, index: int) -> list[dict]:
    """The device, or its MIG instances when MIG is on (each is a CUDA device of its own)."""
    try:
        mig_on = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
    except pynvml.NVMLError:  # not MIG-capable
        mig_on = False
    if not mig_on:
        return [_device_entry(pynvml, handle, index, mig=False)]
    instances = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            instances.append(_device_entry(pynvml, pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot),
                                           index, mig=True))
        except pynvml.NVMLError:  # an empty slot
            continue
    return instances


def _device_entry(pynvml, handle, index: int, mig: bool) -> dict:
    try:
        m = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        memory = {"total": m.total, "reserved": m.reserved, "used": m.used, "free": m.free}
    except pynvml.NVMLError:  # drivers before R510: v1 only, `used` includes the reserved memory
        m = pynvml.nvmlDeviceGetMemoryInfo(handle)
        memory = {"total": m.total, "reserved": None, "used": m.used, "free": m.free}
    entry = {"index": index, "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
             "name": _text(pynvml.nvmlDeviceGetName(handle)), "mig": mig, "memory": memory}
    try:
        entry["processes"] = [
            {"pid": p.pid, "used": p.usedGpuMemory, "in_namespace": os.path.exists(f"/proc/{p.pid}")}
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        ]
    except pynvml.NVMLError as error:  # e.g. MIG instances without the privilege to list processes
        entry["processes"] = None
        entry["processes_error"] = str(error)
    return entry


def _is_wsl() -> bool:
    try:
        with open("/proc/version") as f:
            return "microsoft" in f.read().lower()
    except OSError:
        return False


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
