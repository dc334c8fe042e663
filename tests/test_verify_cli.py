"""`hybrid-alloc verify`: exit 3 without a driver (this machine has none), JSON on injected NVML samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hybrid_alloc.validation import nvml, verify
from hybrid_alloc.cli import main
from hybrid_alloc.validation.reconcile import REPORT_SCHEMA

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
MiB = 1 << 20


def test_no_driver_is_one_line_and_exit_3():
    if nvml_present():
        return
    done = subprocess.run([sys.executable, "-m", "hybrid_alloc", "verify"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def nvml_present() -> bool:
    try:
        nvml.read_raw()
        return True
    except nvml.NvmlUnavailable:
        return False


def run_json(monkeypatch, capsys, fixture, argv, cmdlines):
    monkeypatch.setattr(nvml, "read_raw", lambda: json.loads((FIXTURES / fixture).read_text()))
    monkeypatch.setattr(verify, "cmdline", lambda pid: cmdlines.get(pid, ""))
    assert main(["verify", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_picks_vllm_processes_and_reconciles_a_report(monkeypatch, capsys, tmp_path):
    cmdlines = {1000: "VLLM::Worker_PP0", 1001: "VLLM::Worker_PP1", 1002: "VLLM::Worker_PP2", 2000: "Xorg"}
    budget = {"weights": 3000 * MiB, "peak_activations": 500 * MiB, "non_torch": 100 * MiB,
              "cuda_graphs": 300 * MiB, "kv_cache": 6700 * MiB, "cuda_context": 400 * MiB}  # 11000 MiB
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"schema": REPORT_SCHEMA, "pid": 1001, "gpu_uuid": "GPU-constructed-3060-1",
                                  "pp_rank": 1, "budget": budget, "plan_tags": {"kv_cache": 6700 * MiB},
                                  "allocator_tags": {"kv_cache": 6700 * MiB}}))
    out = run_json(monkeypatch, capsys, "rtx3060x3_vllm_pp3.json", ["--report", str(report)], cmdlines)
    assert [p["pid"] for p in out["processes"]] == [1000, 1001, 1002]  # not Xorg
    rec = out["reconciliations"][0]
    assert (rec["measured"], rec["unaccounted"], rec["verdict"]) == (11000 * MiB, 0, "ok")


def test_json_by_pid_and_container_fallback(monkeypatch, capsys):
    out = run_json(monkeypatch, capsys, "rtx3060x3_vllm_pp3.json", ["2000"], {})
    assert [(p["pid"], p["used"]) for p in out["processes"]] == [(2000, 10 * MiB)]
    out = run_json(monkeypatch, capsys, "container_rtx4090.json", [], {})
    (row,) = out["processes"]
    assert row["pid"] is None and row["used"] == 7325 * MiB and "PID namespace" in row["note"]


def test_table_and_bad_report_is_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(nvml, "read_raw", lambda: json.loads((FIXTURES / "wsl_rtx4070tis.json").read_text()))
    assert main(["verify"]) == 0
    assert "WSL" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["verify", "--report", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
