"""The launch plan of `hybrid-alloc validate`: the two `vllm serve` commands (stock, then the plugin) and
their environments, from the parsed arguments. Read by the dry run (validate.py) and the real run (runner.py)."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"  # what the `vllm` script runs (vllm_versions.ENGINE_TESTED)


def launches(args: argparse.Namespace) -> list[tuple[str, dict[str, str], list[str]]]:
    """(label, environment, command) for the stock run, then the plugin run."""
    devices = ",".join(str(i) for i in range(args.pp * args.tp))
    command = ["vllm", "serve", args.model_path or args.model,
               "--pipeline-parallel-size", str(args.pp), "--tensor-parallel-size", str(args.tp),
               "--max-model-len", str(args.max_model_len)]
    if gpu_memory_utilization(args) is not None:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization(args))]
    command += ["--port", str(args.port), "--seed", "0"]
    if args.model_path:
        command += ["--served-model-name", args.model]
    command += args.vllm_args
    base = ({"CUDA_VISIBLE_DEVICES": devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if device(args) == "cuda"
            else {"VLLM_TARGET_DEVICE": "cpu"})
    plugin = {**base, "HYBRID_ALLOC": "1", "HYBRID_ALLOC_REPORT_DIR": os.path.join(args.out, "plugin")}
    return [("stock", base, command), ("plugin", plugin, command)]


def trace_source(args: argparse.Namespace) -> str:
    """What the trace reads: the checkpoint's config.json, else the bundled config of the named model."""
    return args.model_path or args.model


def device(args: argparse.Namespace) -> str:
    """"cpu" (vLLM's CPU backend, no NVML) with --device cpu or --hardware cpu; else "cuda"."""
    return args.device or ("cpu" if args.hardware == "cpu" else "cuda")


def gpu_memory_utilization(args: argparse.Namespace) -> float | None:
    """The flag's value; on CPU vLLM's default (None) unless given."""
    if args.gpu_memory_utilization is None and device(args) == "cuda":
        return DEFAULT_GPU_MEMORY_UTILIZATION
    return args.gpu_memory_utilization


def server_command(args: argparse.Namespace, command: list[str]) -> list[str]:
    """`vllm serve ...` as started: through --vllm-python (vLLM's CLI module), not the `vllm` script."""
    return [args.vllm_python or sys.executable, "-m", VLLM_CLI_MODULE, *command[1:]]
