"""Run one vLLM engine on CPU and print its results as JSON (one subprocess per engine: a crash stays here).

Usage: python run_engine.py SPEC_JSON  where SPEC_JSON holds
  model, engine (extra ``LLM`` keyword arguments), workloads: [{prompts (token id lists), max_tokens}],
  each submitted as one ``generate`` call.
Prints one line ``RESULT {...}``: per workload the tokens of each prompt, engine steps and preemptions
(deltas of ``vllm:iteration_tokens_total``'s count and ``vllm:num_preemptions``); cache_config_info.
"""

from __future__ import annotations

import json
import sys


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
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in workload["prompts"]], params, use_tqdm=False)
        after = _metrics(llm)
        results.append(
            {
                "tokens": [list(o.outputs[0].token_ids) for o in outs],
                "steps": after["steps"] - before["steps"],
                "preemptions": after["preemptions"] - before["preemptions"],
                "prefix_queries": after["prefix_queries"] - before["prefix_queries"],
                "prefix_hits": after["prefix_hits"] - before["prefix_hits"],
            }
        )
    return {"workloads": results, "cache_config_info": _metrics(llm)["cache_config_info"]}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        result = main(json.load(f))
    print("RESULT " + json.dumps(result), flush=True)
