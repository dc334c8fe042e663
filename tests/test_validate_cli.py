"""`hybrid-alloc validate --dry-run`: the two launches, the load and the trace's prediction, without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hybrid_alloc.cli import main

ROOT = Path(__file__).parent.parent
BUNDLED_9B = ROOT / "hybrid_alloc" / "models" / "configs" / "Qwen--Qwen3.5-9B.json"


def test_dry_run_defaults_are_the_named_setup(capsys):
    assert main(["validate", "--dry-run", "--", "--quantization", "awq"]) == 0
    out = capsys.readouterr().out
    stock, plugin = [line for line in out.splitlines() if "vllm serve" in line]
    assert "CUDA_VISIBLE_DEVICES=0,1,2" in stock and "HYBRID_ALLOC=1" not in stock
    assert "HYBRID_ALLOC=1" in plugin and "HYBRID_ALLOC_REPORT_DIR=validation/plugin" in plugin
    for line in (stock, plugin):
        assert "vllm serve Qwen/Qwen3.5-9B --pipeline-parallel-size 3 --tensor-parallel-size 1" in line
        assert line.endswith("--quantization awq")
    assert "32 requests" in out and "greedy" in out
    assert "RTX 3060" in out and out.count("Stage ") == 3  # the trace's prediction


def test_prediction_counts_the_vision_tower_unless_vllm_is_told_language_model_only(capsys):
    """`vllm serve Qwen/Qwen3.5-9B` loads the checkpoint's vision tower; with --language-model-only it does not,
    and the prediction follows the vLLM arguments."""
    assert main(["validate", "--dry-run"]) == 0
    assert "vision tower loaded" in capsys.readouterr().out
    assert main(["validate", "--dry-run", "--", "--language-model-only"]) == 0
    out = capsys.readouterr().out
    assert "language model only (--language-model-only)" in out and "vision tower loaded" not in out


def test_model_path_is_served_and_traced(capsys, tmp_path):
    (tmp_path / "config.json").write_text(BUNDLED_9B.read_text())
    assert main(["validate", "Qwen/Qwen3.5-9B", "--model-path", str(tmp_path), "--pp", "1", "--hardware", "h100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"vllm serve {tmp_path} --pipeline-parallel-size 1" in out and "--served-model-name Qwen/Qwen3.5-9B" in out
    assert "CUDA_VISIBLE_DEVICES=0 " in out and "PP=1" in out


def test_unknown_model_is_one_line_exit_2(capsys):
    assert main(["validate", "no/such-model", "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_real_run_without_driver_is_exit_3():
    done = subprocess.run([sys.executable, "-m", "hybrid_alloc", "validate"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode in (2, 3) and done.stderr.count("\n") == 1  # 2 only where a driver exists
    assert "Traceback" not in done.stderr


# --- the real run's parts that need no server: arguments, load, comparison, capacity, report ---------------

import json as _json

import pytest

from hybrid_alloc.validation.reconcile import REPORT_SCHEMA
from hybrid_alloc.validation import load, report, server


@pytest.mark.parametrize("argv, text", [
    (["--prompt-tokens", "64,x"], "--prompt-tokens"),
    (["--prompt-tokens", "0"], "at least 1"),
    (["--requests", "0"], "--requests"),
    (["--max-tokens", "100", "--prompt-tokens", "1000", "--max-model-len", "1024"], "do not fit"),
    (["--model-path", "/no/such/folder"], "--model-path /no/such/folder"),
    (["--vllm-python", "/no/such/python"], "--vllm-python"),
    (["--pp", "0"], "--pp"),
])
def test_argument_errors_are_one_line_exit_2(capsys, argv, text):
    assert main(["validate", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and "Traceback" not in err


def test_bad_model_folder_is_exit_2(capsys):
    assert main(["validate", "/no/such/model", "--device", "cpu"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_dry_run_on_cpu_uses_the_cli_module_and_cpu_backend(capsys):
    assert main(["validate", "--pp", "1", "--hardware", "cpu", "--vllm-python", sys.executable, "--dry-run",
                 "--requests", "8", "--max-tokens", "8", "--prompt-tokens", "16,200", "--max-model-len", "1024",
                 "--", "--kv-cache-memory-bytes", "800000000"]) == 0
    out = capsys.readouterr().out
    assert f"{sys.executable} -m vllm.entrypoints.cli.main" in out and "CPU backend" in out
    assert "VLLM_TARGET_DEVICE=cpu" in out and "CUDA_VISIBLE_DEVICES" not in out
    assert "--gpu-memory-utilization" not in out and "8 requests" in out and "16, 200 tokens" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_is_a_user_error(tmp_path):
    import socket

    from hybrid_alloc.errors import UserError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} is busy"):
            server.Server("stock", ["true"], {}, str(tmp_path / "log"), port).start()


def test_server_that_exits_early_is_a_user_error_with_the_log_tail(tmp_path, capsys):
    from hybrid_alloc.errors import UserError

    argv = [sys.executable, "-c", "print('loading'); print('ValueError: no such model'); raise SystemExit(1)"]
    s = server.Server("stock", argv, dict(os.environ), str(tmp_path / "stock.log"), _free_port())
    s.start()
    with pytest.raises(UserError, match="exited with code 1 before it was ready") as error:
        s.wait_healthy(60, poll=0.1)
    assert "\n" not in str(error.value)
    assert "no such model" in capsys.readouterr().err


def test_server_is_stopped_with_sigint(tmp_path):
    code = ("import signal, time, sys\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
            "print('up', flush=True)\ntime.sleep(60)")
    s = server.Server("stock", [sys.executable, "-c", code], dict(os.environ), str(tmp_path / "log"), _free_port())
    s.start()
    import time

    while "up" not in (tmp_path / "log").read_text():
        time.sleep(0.05)
    assert s.stop(grace=10) == 7


def test_cache_config_info_from_metrics():
    text = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
            'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="1234"} 1.0\n')
    assert server.parse_cache_config_info(text) == {"block_size": "16", "cache_dtype": "auto", "num_gpu_blocks": "1234"}
    assert server.parse_cache_config_info("vllm:other 1\n") == {}


def test_prompts_are_deterministic_and_mixed():
    a, b = load.prompts(6, (4, 9), 512), load.prompts(6, (4, 9), 512)
    assert a == b and [len(p) for p in a] == [4, 9, 4, 9, 4, 9]
    assert all(64 <= t < 512 for p in a for t in p)


def test_vocab_size_from_a_folder_and_nested_text_config(tmp_path):
    (tmp_path / "config.json").write_text(_json.dumps({"text_config": {"vocab_size": 1000}}))
    assert load.vocab_size(str(tmp_path)) == 1000
    assert load.vocab_size(str(tmp_path / "missing")) == load.FALLBACK_VOCAB


def test_compare_counts_identical_and_first_difference():
    c = report.compare([[1, 2, 3], [4, 5, 6], [7]], [[1, 2, 3], [4, 9, 6], [7, 8]])
    assert c["identical"] == 1 and c["total"] == 3
    assert c["differing"] == [{"request": 1, "first_difference": 1, "stock_tokens": 3, "plugin_tokens": 3},
                              {"request": 2, "first_difference": 1, "stock_tokens": 1, "plugin_tokens": 2}]


def _run(label, blocks, block_size, concurrency, outputs, seconds):
    lines = [f"CPU KV cache size: {blocks * block_size:,} tokens",
             f"Maximum concurrency for 1,024 tokens per request: {concurrency:.2f}x"]
    plugin = ["hybrid-alloc: 300 blocks x 16 tokens; a state slot = 4 blocks; ..."] if label == "plugin" else []
    generated = sum(map(len, outputs))
    return {"label": label, "command": ["python", "-m", "vllm.entrypoints.cli.main", "serve", "m"],
            "env": {"HYBRID_ALLOC": "1"} if label == "plugin" else {}, "log": f"/out/{label}.log",
            "startup_seconds": 12.5, "exit_code": 0,
            "cache_config_info": {"block_size": str(block_size), "num_gpu_blocks": str(blocks)},
            "capacity_lines": lines, "plugin_lines": plugin, "nvml": None,
            "load": {"seconds": seconds, "generated_tokens": generated, "tokens_per_s": generated / seconds,
                     "outputs": outputs}}


def _startup_report(folder, kv, rank=0, nvml=None, reconciliation=None):
    raw = {"schema": REPORT_SCHEMA, "pid": 42 + rank, "gpu_uuid": "", "pp_rank": rank, "tp_rank": 0, "device": "cpu",
           "budget": {"weights": 1, "peak_activations": 0, "non_torch": 0, "cuda_graphs": 0, "kv_cache": kv,
                      "cuda_context": 0},
           "plan_tags": {"kv_cache": kv}, "allocator_tags": {"kv_cache": kv},
           "allocator_kv_cache": {"current": kv, "reserved": kv}, "allocator_note": "",
           "nvml": nvml or {"available": False, "reason": "NVML library not found"},
           "reconciliation": reconciliation, "reconciliation_note": "" if reconciliation else "no NVML measurement"}
    (folder / f"worker-pp{rank}-tp0-pid{42 + rank}.json").write_text(_json.dumps(raw))


def test_report_from_recorded_runs(tmp_path):
    _startup_report(tmp_path, 7_999_488)
    reports = report.startup_reports(str(tmp_path))
    assert reports[0]["kv_exact"] and reports[0]["kv_plan"] == 7_999_488
    runs = {"stock": _run("stock", 20, 528, 1.5, [[1, 2], [3, 4]], 2.0),
            "plugin": _run("plugin", 300, 16, 4.0, [[1, 2], [3, 5]], 1.0)}
    setup = {"model": "tiny", "model_path": None, "pp": 1, "tp": 1, "device": "cpu", "hardware": "cpu",
             "max_model_len": 1024, "vllm_args": ["--dtype", "float32"], "vllm_python": "python",
             "load": {"requests": 2, "prompt_tokens": [16, 200], "max_tokens": 2, "seed": 0}}
    r = report.build(setup, runs, reports, {"available": False, "reason": "device cpu"})
    assert r["capacity"]["stock"] == {"block_size": 528, "num_blocks": 20, "kv_tokens": 10560,
                                      "max_concurrency": 1.5, "at_tokens": 1024}
    assert r["comparison"]["identical"] == 1 and r["tokens_per_s"] == {"stock": 2.0, "plugin": 4.0}
    assert "max concurrency at 1,024 tokens: stock 1.50, plugin 4.00 (2.67x)" in r["summary"]
    assert "KV cache: allocator's tagged bytes = plan on 1 of 1 workers" in r["summary"]
    assert "NVML unavailable: device cpu" in r["summary"]
    paths = report.write(r, str(tmp_path))
    assert _json.loads(open(paths["json"]).read())["runs"]["plugin"]["load"]["outputs"] == [[1, 2], [3, 5]]
    md = open(paths["md"]).read()
    assert "| plugin | 16 | 300 | 4,800 | 4.00 |" in md and "request 1: first differs at token 1" in md
    assert "NVML unavailable (NVML library not found)" in md and "hybrid-alloc: 300 blocks" in md
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_without_startup_reports_says_so(tmp_path):
    runs = {"stock": _run("stock", 20, 528, 1.5, [[1]], 1.0), "plugin": _run("plugin", 300, 16, 4.0, [[1]], 1.0)}
    setup = {"model": "tiny", "pp": 1, "tp": 1, "device": "cpu", "vllm_args": [],
             "load": {"requests": 1, "prompt_tokens": [16], "max_tokens": 1, "seed": 0}}
    r = report.build(setup, runs, [], {"available": True, "reason": ""})
    assert any("no startup report" in line for line in r["summary"])
    assert "None: the plugin wrote no startup report." in report.markdown(r)


def test_report_with_nvml_reconciliation_per_gpu(tmp_path):
    """The shape a CUDA run's startup reports have (fields as startup_report.build writes them)."""
    gib = 1 << 30
    for rank in range(3):
        _startup_report(tmp_path, 2 * gib, rank, nvml={"available": True, "reason": "", "measured": 11 * gib,
                                                       "note": "", "gpu": {"index": rank, "name": "RTX 3060"}},
                        reconciliation={"measured": 11 * gib, "budget": 10 * gib + gib // 2, "unaccounted": gib // 2,
                                        "tolerance": gib // 4, "verdict": "over" if rank == 2 else "ok"})
    reports = report.startup_reports(str(tmp_path))
    assert [r["pp_rank"] for r in reports] == [0, 1, 2]
    runs = {"stock": _run("stock", 20, 528, 1.5, [[1]], 1.0), "plugin": _run("plugin", 300, 16, 4.0, [[1]], 1.0)}
    runs["stock"]["nvml"] = [{"index": 0, "name": "RTX 3060", "uuid": "GPU-0", "total": 12 * gib, "used": 11 * gib}]
    setup = {"model": "Qwen/Qwen3.5-9B", "pp": 3, "tp": 1, "device": "cuda", "vllm_args": [],
             "load": {"requests": 1, "prompt_tokens": [64], "max_tokens": 1, "seed": 0}}
    r = report.build(setup, runs, reports, {"available": True, "reason": ""})
    assert "NVML reconciliation: ok, ok, over" in r["summary"]
    md = report.markdown(r)
    assert "| 2 | 0 | cpu | 2,147,483,648 | 2,147,483,648 | yes | 11,811,160,064 | 11,274,289,152 | over |" in md
    assert "stock run, GPU 0 (RTX 3060): 11,811,160,064 of 12,884,901,888 B used" in md
    assert "NVML unavailable" not in md
    report.write(r, str(tmp_path))
    assert os.path.getsize(tmp_path / "report.png") > 5000


def test_busy_port_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    import socket

    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["validate", str(tmp_path), "--device", "cpu", "--max-model-len", "1024", "--prompt-tokens", "16",
                     "--max-tokens", "8", "--port", str(port), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"hybrid-alloc: error: port {port} is busy (another server?): stop it or give --port\n"
