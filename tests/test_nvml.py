"""NVML parsing, CUDA order and the degraded cases, on recorded samples (tests/fixtures/nvml, provenance inside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_alloc.validation import nvml

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
MiB = 1 << 20


def sample(name: str) -> nvml.Snapshot:
    return nvml.parse(json.loads((FIXTURES / name).read_text()))


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_every_fixture_states_its_provenance_and_adds_up(path):
    raw = json.loads(path.read_text())
    assert raw["provenance"]["kind"] in ("recorded", "partly constructed", "constructed")
    assert raw["provenance"]["notes"]
    for gpu in nvml.parse(raw).gpus:
        m = gpu.memory
        assert m.total == (m.reserved or 0) + m.used + m.free


def test_v2_reserved_is_kept_apart_from_used():
    gpu = sample("a6000_wddm_reserved.json").gpus[0]
    assert (gpu.memory.total, gpu.memory.reserved, gpu.memory.used) == (49140 * MiB, 569 * MiB, 0)


def test_idle_rtx3060_and_h100_have_no_problem():
    for name in ("rtx3060_idle.json", "h100_idle.json"):
        snapshot = sample(name)
        assert all(snapshot.per_process_problem(g) == "" and g.processes == () for g in snapshot.gpus)
    assert sample("h100_idle.json").gpus[1].memory.total == 81559 * MiB


def test_wsl_per_process_use_is_unavailable_and_says_why():
    snapshot = sample("wsl_rtx4070tis.json")
    assert "WSL (GPU-PV)" in snapshot.per_process_problem(snapshot.gpus[0])


def test_container_pid_namespace_falls_back_to_the_device():
    snapshot = sample("container_rtx4090.json")
    assert "another PID namespace" in snapshot.per_process_problem(snapshot.gpus[0])


def test_mig_instances_without_process_access():
    snapshot = sample("mig_a100.json")
    assert [g.memory.used // MiB for g in snapshot.gpus] == [14366, 9880, 13]
    assert "Insufficient Permissions" in snapshot.per_process_problem(snapshot.gpus[0])


def test_cuda_visible_devices_indices_uuids_and_stop_at_bad_entry():
    gpus = sample("rtx3060x3_vllm_pp3.json").gpus
    pick = lambda visible: [g.index for g in nvml.cuda_order(gpus, visible)[0]]  # noqa: E731
    assert pick(None) == [0, 1, 2]
    assert pick("2,0") == [2, 0]
    assert pick("GPU-constructed-3060-1,0") == [1, 0]
    assert pick("1,7,0") == [1]  # parsing stops at a device that does not exist
    assert pick("GPU-constructed") == []  # an ambiguous prefix names nothing
    assert pick("") == []
    mig = sample("mig_a100.json").gpus
    assert [g.uuid for g in nvml.cuda_order(mig, "MIG-constructed-gi5")[0]] == ["MIG-constructed-gi5"]


def test_mixed_gpus_without_pci_order_get_a_note():
    gpus = sample("rtx3060_idle.json").gpus + sample("h100_idle.json").gpus
    assert "CUDA_DEVICE_ORDER" in nvml.cuda_order(gpus, "0")[1]
    assert nvml.cuda_order(gpus, "0", "PCI_BUS_ID")[1] == ""


def test_no_driver_here_is_an_explicit_unavailable():
    with pytest.raises(nvml.NvmlUnavailable, match="NVIDIA|pynvml"):
        nvml.read_raw()
