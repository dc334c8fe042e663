"""`hybrid-alloc validate`: what a stock-vs-plugin validation run launches, and the trace's prediction.

Only `--dry-run` is implemented: the GPU run (launch both servers, reconcile with NVML, run the load,
compare outputs and throughput, write the report) is not yet."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from hybrid_alloc import nvml
from hybrid_alloc.errors import UserError
from hybrid_alloc.verify import NO_DRIVER_EXIT

DEFAULT_MODEL = "Qwen/Qwen3.5-9B"
DEFAULT_MAX_MODEL_LEN = 32768
# The fixed short load: prompts of these token lengths, in turn, greedy (temperature 0), fixed output length.
LOAD_PROMPT_TOKENS = (64, 512, 2048, 8192)
LOAD_REQUESTS = 32
LOAD_MAX_TOKENS = 128


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "validate", help="stock vLLM vs the plugin on your GPUs (only --dry-run is implemented)",
        description="Plan a validation run: vLLM twice (stock, then with HYBRID_ALLOC=1), a fixed short load, "
        "NVML reconciliation. Only --dry-run is implemented: it prints the launches and the trace's prediction "
        "and needs no GPU. The GPU run itself is not implemented yet. Arguments after -- go to `vllm serve`.",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"served model (default: {DEFAULT_MODEL})")
    parser.add_argument("--model-path", help="local checkpoint (e.g. a 4-bit AWQ/GPTQ folder); the trace reads its "
                        "config.json")
    parser.add_argument("--pp", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--hardware", default="rtx3060", help="hardware profile for the prediction")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", default="validation", help="folder for reports")
    parser.add_argument("--dry-run", action="store_true", help="print what would run; no GPU needed")
    parser.set_defaults(handler=run, vllm_args=[])
    # argparse cannot put `--` arguments after an optional positional, so split them off first.
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        head, tail = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        namespace, extra = parse(head, namespace)
        namespace.vllm_args = tail
        return namespace, extra

    parser.parse_known_args = parse_known_args


def launches(args: argparse.Namespace) -> list[tuple[str, dict[str, str], list[str]]]:
    """(label, environment, command) for the stock run, then the plugin run."""
    devices = ",".join(str(i) for i in range(args.pp * args.tp))
    command = ["vllm", "serve", args.model_path or args.model,
               "--pipeline-parallel-size", str(args.pp), "--tensor-parallel-size", str(args.tp),
               "--max-model-len", str(args.max_model_len),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization),
               "--port", str(args.port), "--seed", "0"]
    if args.model_path:
        command += ["--served-model-name", args.model]
    command += args.vllm_args
    base = {"CUDA_VISIBLE_DEVICES": devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    plugin = {**base, "HYBRID_ALLOC": "1", "HYBRID_ALLOC_REPORT_DIR": os.path.join(args.out, "plugin")}
    return [("stock", base, command), ("plugin", plugin, command)]


def trace_source(args: argparse.Namespace) -> str:
    """What the trace reads: the checkpoint's config.json, else the bundled config of the named model."""
    return args.model_path or args.model


def run(args: argparse.Namespace) -> None:
    if args.pp < 1 or args.tp < 1:
        raise UserError("--pp and --tp must be at least 1")
    if not args.dry_run:
        try:
            nvml.read_raw()
        except nvml.NvmlUnavailable as reason:
            print(f"hybrid-alloc: {reason}", file=sys.stderr)
            raise SystemExit(NO_DRIVER_EXIT) from None
        raise UserError("the GPU validation run is not implemented yet: use --dry-run, and `hybrid-alloc verify` "
                        "on a running server")
    _print_plan(args)


def _print_plan(args: argparse.Namespace) -> None:
    from hybrid_alloc.planner.hardware import get_hardware
    from hybrid_alloc.planner.settings import Settings
    from hybrid_alloc.planner.trace import run_trace
    from hybrid_alloc.report import render

    print(f"Would run, one after the other, on {args.pp * args.tp} GPU(s):")
    for label, env, command in launches(args):
        print(f"  {label}: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command))
    lengths = ", ".join(str(n) for n in LOAD_PROMPT_TOKENS)
    print(f"Load (each run): {LOAD_REQUESTS} requests, prompts of {lengths} tokens in turn, greedy "
          f"(temperature 0), max_tokens {LOAD_MAX_TOKENS}; outputs compared token by token, throughput timed.")
    print(f"Reports: {os.path.join(args.out, 'plugin')} (the plugin's startup reports, for `hybrid-alloc verify "
          "--report`).")
    print("Prediction (hybrid-alloc trace):")
    hardware = get_hardware(args.hardware)
    settings = Settings(hardware=args.hardware, pp=args.pp, tp=args.tp, max_model_len=args.max_model_len,
                        gpu_memory_utilization=args.gpu_memory_utilization,
                        max_num_seqs=hardware.default_max_num_seqs)
    render.print_trace(run_trace(trace_source(args), settings))
