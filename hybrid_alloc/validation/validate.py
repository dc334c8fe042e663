"""`hybrid-alloc validate`: stock vLLM vs the plugin on the same setup.

The run (runner.py, with the launches of launch.py): `vllm serve` twice, one after the other (stock, then
HYBRID_ALLOC=1), each time the capacity vLLM reports, the fixed short load (LOAD_*), generated tokens/s; then
the outputs compared token by token, the plugin's startup reports (plan, allocator, NVML reconciliation per GPU) and
report.md / report.json / report.png in --out. `--dry-run` prints the launches and the trace's prediction.
On CUDA without an NVIDIA driver: one line, exit 3; `--device cpu` (or `--hardware cpu`) runs on vLLM's
CPU backend without NVML."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.max_model_len import allow_long_max_model_len
from hybrid_alloc.planner.comparison import compare_model
from hybrid_alloc.planner.hardware import get_hardware
from hybrid_alloc.planner.settings import Settings
from hybrid_alloc.report import render
from hybrid_alloc.validation import nvml
from hybrid_alloc.validation.launch import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    device,
    gpu_memory_utilization,
    launches,
    server_command,
    trace_source,
)
from hybrid_alloc.validation.runner import run_validation
from hybrid_alloc.validation.verify import NO_DRIVER_EXIT

DEFAULT_MODEL = "Qwen/Qwen3.5-9B"
DEFAULT_MAX_MODEL_LEN = 32768
# The fixed short load: prompts of these token lengths, in turn, greedy (temperature 0), fixed output length.
LOAD_PROMPT_TOKENS = (64, 512, 2048, 8192)
LOAD_REQUESTS = 32
LOAD_MAX_TOKENS = 128


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "validate", help="stock vLLM vs the plugin on your GPUs: capacity, outputs, throughput, NVML",
        description="Runs vLLM twice (stock, then with HYBRID_ALLOC=1), each with a fixed short load; compares "
        "outputs and throughput, reconciles with NVML and writes report.md/.json/.png to --out. --dry-run prints "
        "the launches and the trace's prediction (no GPU needed). Arguments after -- go to `vllm serve`.",
    )
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"served model (default: {DEFAULT_MODEL})")
    parser.add_argument("--model-path", help="local checkpoint (e.g. a 4-bit AWQ/GPTQ folder); the trace reads its "
                        "config.json")
    parser.add_argument("--pp", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--hardware", default="rtx3060", help="hardware profile for the prediction")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--gpu-memory-utilization", type=float,
                        help=f"(default: {DEFAULT_GPU_MEMORY_UTILIZATION} on CUDA, vLLM's default on CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="cuda (NVML required) or cpu (vLLM's CPU backend; default with --hardware cpu)")
    parser.add_argument("--vllm-python", metavar="PATH", help="the Python that runs `vllm serve` (default: this one)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", default="validation", help="folder for reports")
    parser.add_argument("--requests", type=int, default=LOAD_REQUESTS, help=f"load: requests (default {LOAD_REQUESTS})")
    parser.add_argument("--prompt-tokens", default=",".join(map(str, LOAD_PROMPT_TOKENS)),
                        help="load: prompt lengths in turn (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=LOAD_MAX_TOKENS,
                        help=f"load: generated tokens per request (default {LOAD_MAX_TOKENS})")
    parser.add_argument("--startup-timeout", type=float, default=1200, help="seconds to wait for /health")
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


def _prompt_tokens(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise UserError(f"--prompt-tokens {text!r}: give token counts separated by commas, e.g. 64,512") from None
    if not lengths or min(lengths) < 1:
        raise UserError(f"--prompt-tokens {text!r}: every length must be at least 1")
    return lengths


def check(args: argparse.Namespace) -> tuple[int, ...]:
    """Argument errors (UserError); the prompt lengths."""
    if args.pp < 1 or args.tp < 1:
        raise UserError("--pp and --tp must be at least 1")
    if args.requests < 1 or args.max_tokens < 1:
        raise UserError("--requests and --max-tokens must be at least 1")
    lengths = _prompt_tokens(args.prompt_tokens)
    if max(lengths) + args.max_tokens > args.max_model_len:
        raise UserError(f"prompts of up to {max(lengths)} tokens + --max-tokens {args.max_tokens} do not fit "
                        f"--max-model-len {args.max_model_len}")
    if args.model_path and not os.path.exists(args.model_path):
        raise UserError(f"--model-path {args.model_path}: no such file or folder")
    if args.model.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(args.model)):
        raise UserError(f"{args.model}: no such model folder")
    if args.vllm_python and not (os.path.isfile(args.vllm_python) and os.access(args.vllm_python, os.X_OK)):
        raise UserError(f"--vllm-python {args.vllm_python}: not an executable file")
    return lengths


def run(args: argparse.Namespace) -> None:
    lengths = check(args)
    if args.dry_run:
        _print_plan(args)
        return
    nvml_status = {"available": False, "reason": f"device {device(args)}: vLLM's CPU backend, no NVIDIA GPU"}
    if device(args) == "cuda":
        try:
            nvml.read_raw()
        except nvml.NvmlUnavailable as reason:
            print(f"hybrid-alloc: {reason}", file=sys.stderr)
            raise SystemExit(NO_DRIVER_EXIT) from None
        nvml_status = {"available": True, "reason": ""}
    run_validation(args, lengths, nvml_status)


def _print_plan(args: argparse.Namespace) -> None:
    where = f"{args.pp * args.tp} GPU(s)" if device(args) == "cuda" else "vLLM's CPU backend"
    print(f"Would run, one after the other, on {where} (the servers started as "
          f"{shlex.join(server_command(args, ['vllm']))}):")
    for label, env, command in launches(args):
        print(f"  {label}: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command))
    lengths = ", ".join(str(n) for n in _prompt_tokens(args.prompt_tokens))
    print(f"Load (each run): {args.requests} requests, prompts of {lengths} tokens in turn, greedy "
          f"(temperature 0), max_tokens {args.max_tokens}; outputs compared token by token, throughput timed.")
    print(f"Reports: {os.path.join(args.out, 'plugin')} (the plugin's startup reports, for `hybrid-alloc verify "
          "--report`).")
    print("Prediction (hybrid-alloc trace):")
    hardware = get_hardware(args.hardware)
    settings = Settings(hardware=args.hardware, pp=args.pp, tp=args.tp, max_model_len=args.max_model_len,
                        gpu_memory_utilization=gpu_memory_utilization(args) or DEFAULT_GPU_MEMORY_UTILIZATION,
                        max_num_seqs=hardware.default_max_num_seqs, kv_cache_memory=_kv_cache_bytes(args.vllm_args),
                        prefix_caching="--no-enable-prefix-caching" not in args.vllm_args,
                        language_model_only="--language-model-only" in args.vllm_args)
    render.print_trace(compare_model(trace_source(args), settings, allow_long_max_model_len()))


def _kv_cache_bytes(vllm_args: list[str]) -> int | None:
    """--kv-cache-memory-bytes N (or =N) among the vLLM arguments, for the prediction."""
    for i, arg in enumerate(vllm_args):
        value = (arg.partition("=")[2] if arg.startswith("--kv-cache-memory-bytes=")
                 else vllm_args[i + 1] if arg == "--kv-cache-memory-bytes" and i + 1 < len(vllm_args) else None)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None
