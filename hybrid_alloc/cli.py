"""The `hybrid-alloc` command line. Bad input exits with code 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import os
import re
import sys

from hybrid_alloc import alloc_trace
from hybrid_alloc.errors import UserError
from hybrid_alloc.models.loader import MAMBA_DTYPES
from hybrid_alloc.models.max_model_len import allow_long_max_model_len
from hybrid_alloc.planner.comparison import StartupRefusal, compare_model
from hybrid_alloc.planner.hardware import HARDWARE, get_hardware
from hybrid_alloc.planner.settings import (
    KV_CACHE_DTYPES,
    MAMBA_CACHE_MODES,
    SUPPORTED_VLLM_VERSIONS,
    VLLM_KV_CACHE_DTYPES,
    VLLM_QUANTIZATION_METHODS,
    Settings,
)
from hybrid_alloc.report import json_report, render
from hybrid_alloc.report.plot import write_plot
from hybrid_alloc.validation import validate, verify

# With no MODEL, the embedded default: Qwen3.5-9B on 3x RTX 3060 12 GiB, PP=3, 32k-token requests
# (its 262,144-token max_position_embeddings does not fit there, in vLLM as here), text only: as if
# --language-model-only were given (the checkpoint's vision tower is not loaded; --no-language-model-only
# loads it).
DEFAULT_MODEL = "qwen3.5-9b"
DEFAULT_PP = 3
DEFAULT_MAX_MODEL_LEN = 32768

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from `12GiB`, `8GB`, `512MiB`, `1.5GiB` or plain bytes."""
    match = _SIZE.match(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        )
    return int(float(match.group(1)) * unit)


def _number(kind, minimum, maximum=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, exit code 2 (argparse's code), no usage block.
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybrid-alloc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    trace = commands.add_parser(
        "trace",
        help="how stock vLLM and the natural layout would lay out the KV cache, and where every byte goes",
    )
    trace.add_argument(
        "model", nargs="?",
        help=f"config.json, a model folder or a bundled name (default: {DEFAULT_MODEL} with --pp {DEFAULT_PP} "
        f"--max-model-len {DEFAULT_MAX_MODEL_LEN} --language-model-only)",
    )
    trace.add_argument("--hardware", choices=tuple(HARDWARE), default="rtx3060")
    trace.add_argument("--pp", type=_number(int, 1), help=f"pipeline stages (default: 1; {DEFAULT_PP} with no MODEL)")
    trace.add_argument("--tp", type=_number(int, 1), default=1)
    trace.add_argument(
        "--pp-layer-partition", default=os.environ.get("VLLM_PP_LAYER_PARTITION") or None,
        help="decoder layers per stage, e.g. 10,11,11 (default: $VLLM_PP_LAYER_PARTITION)",
    )
    trace.add_argument("--kv-cache-memory", type=parse_size, help="KV cache bytes per GPU (pins the budget)")
    trace.add_argument("--gpu-memory", type=parse_size, help="GPU memory (default: the hardware's)")
    trace.add_argument("--gpu-memory-utilization", type=_number(float, 0.01, 1.0), default=0.92)
    trace.add_argument(
        "--max-model-len", type=_number(int, 1),
        help="default: vLLM's, derived from the config (max_position_embeddings and the other length keys, "
        "RoPE scaling); above it vLLM refuses to start unless $VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
    )
    trace.add_argument("--max-num-seqs", type=_number(int, 1), help="default: vLLM's for the hardware")
    # The engine arguments below mean what they mean to `vllm serve`.
    trace.add_argument("--kv-cache-dtype", choices=VLLM_KV_CACHE_DTYPES, default="auto", metavar="DTYPE",
                       help=f"planned: {', '.join(KV_CACHE_DTYPES)} (the other values vLLM accepts are refused)")
    trace.add_argument("--block-size", type=_number(int, 1),
                       help="attention tokens per block before vLLM's hybrid alignment (default: the backend's)")
    trace.add_argument("--mamba-block-size", type=_number(int, 1),
                       help="with prefix caching; vLLM's hybrid alignment sets it to the block size on stages "
                       "with attention")
    trace.add_argument("--mamba-cache-mode", choices=MAMBA_CACHE_MODES,
                       help="no effect, as in vLLM: the mode follows --prefix-caching (align) / "
                       "--no-prefix-caching (none)")
    trace.add_argument("--mamba-ssm-cache-dtype", choices=MAMBA_DTYPES, default="auto",
                       help="vLLM's --mamba-ssm-cache-dtype (auto: the model's choice)")
    trace.add_argument("--quantization", "-q", choices=VLLM_QUANTIZATION_METHODS, metavar="METHOD",
                       help="the checkpoint's quantization method (weights only: the budget estimate), e.g. awq, "
                       "gptq, fp8, modelopt_fp4 for a bundled name traced for a quantised checkpoint")
    trace.add_argument("--language-model-only", action=argparse.BooleanOptionalAction, default=None,
                       help="vision-language models: the vision encoder is not loaded, as with vLLM's "
                       "--language-model-only (default: loaded; not loaded with no MODEL)")
    trace.add_argument(
        "--cpu-avx512-bf16", action=argparse.BooleanOptionalAction, default=None,
        help="--hardware cpu: whether the target CPU has AVX512-BF16 (vLLM then keeps SSM state in float32); "
        "default: this machine's",
    )
    trace.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    trace.add_argument("--num-speculative-tokens", type=_number(int, 0), default=0)
    trace.add_argument("--vllm-version", choices=SUPPORTED_VLLM_VERSIONS, default=SUPPORTED_VLLM_VERSIONS[0])
    trace.add_argument("--json", action="store_true", help="print the trace as JSON")
    trace.add_argument("--plot", metavar="FILE.png", help="write stacked bars of where the bytes go")
    trace.add_argument(
        "--from", dest="from_file", metavar="TRACE.jsonl",
        help="instead: report a recorded allocation trace (HYBRID_ALLOC_TRACE=path); --json, --plot, --top apply",
    )
    trace.add_argument("--top", type=_number(int, 1), default=10, help="with --from: the N largest allocations")
    trace.set_defaults(handler=run_trace_command)
    verify.add_parser(commands)
    validate.add_parser(commands)
    return parser


def trace_settings(args: argparse.Namespace) -> Settings:
    hardware = get_hardware(args.hardware)
    if args.cpu_avx512_bf16 is not None and hardware.is_cuda:
        raise UserError("--cpu-avx512-bf16 / --no-cpu-avx512-bf16 describe a CPU backend: use them with --hardware cpu")
    if args.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise UserError(
            f"--kv-cache-dtype {args.kv_cache_dtype}: vLLM accepts it, the planner does not lay out its pages "
            f"(scales or packed K/V); planned: {', '.join(KV_CACHE_DTYPES)}"
        )
    max_model_len = args.max_model_len or (DEFAULT_MAX_MODEL_LEN if args.model is None else None)
    if args.mamba_block_size is not None and not args.prefix_caching and args.mamba_block_size != max_model_len:
        # VllmConfig.validate_mamba_block_size
        raise UserError("--mamba-block-size can only be set with --prefix-caching (vLLM's --enable-prefix-caching)")
    if args.mamba_cache_mode is not None and args.mamba_cache_mode != ("align" if args.prefix_caching else "none"):
        print(f"hybrid-alloc: warning: --mamba-cache-mode {args.mamba_cache_mode} has no effect, as in vLLM: "
              f"prefix caching {'on' if args.prefix_caching else 'off'} sets it", file=sys.stderr)
    return Settings(
        hardware=args.hardware,
        vllm_version=args.vllm_version,
        pp=args.pp or (DEFAULT_PP if args.model is None else 1),
        tp=args.tp,
        kv_cache_memory=args.kv_cache_memory,
        gpu_memory=args.gpu_memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs or hardware.default_max_num_seqs,
        kv_cache_dtype=args.kv_cache_dtype,
        block_size=args.block_size,
        mamba_block_size=args.mamba_block_size,
        mamba_ssm_cache_dtype=args.mamba_ssm_cache_dtype,
        cpu_avx512_bf16=args.cpu_avx512_bf16,
        prefix_caching=args.prefix_caching,
        num_speculative_tokens=args.num_speculative_tokens,
        pp_layer_partition=args.pp_layer_partition,
        quantization=args.quantization,
        # absent: loaded, as by `vllm serve`; the embedded default is text only
        language_model_only=args.model is None if args.language_model_only is None else args.language_model_only,
    )


def run_trace_command(args: argparse.Namespace) -> None:
    if args.from_file:
        if args.model:
            raise UserError("trace: give either MODEL or --from TRACE.jsonl, not both")
        return alloc_trace.run(args.from_file, args.top, args.json, args.plot)
    trace = compare_model(args.model or DEFAULT_MODEL, trace_settings(args), allow_long_max_model_len())
    if args.plot:
        if isinstance(trace, StartupRefusal):
            print(f"hybrid-alloc: no plot written to {args.plot}: vLLM refuses to start", file=sys.stderr)
        else:
            write_plot(trace, args.plot)
    if args.json:
        print(json_report.dumps(trace))
    else:
        render.print_trace(trace)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"hybrid-alloc: error: {error}", file=sys.stderr)
        return 2
    return 0
