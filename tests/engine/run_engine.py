"""Run one vLLM engine on CPU and print its results as JSON (one subprocess per engine: a crash stays here).

Usage: python run_engine.py SPEC_JSON  where SPEC_JSON holds
  model, prompts (lists of token ids), max_tokens, engine (extra ``LLM`` keyword arguments),
  batches (optional: submit the prompts in groups of this size, one ``generate`` call each).
Prints one line ``RESULT {...}`` with tokens per prompt, engine steps, preemptions and cache_config_info.
"""

from __future__ import annotations

import json
import sys


def _metrics(llm) -> dict:
    out = {"steps": 0, "preemptions": 0, "cache_config_info": {}}
    for m in llm.get_metrics():
        if m.name == "vllm:iteration_tokens_total":
            out["steps"] += m.count
        elif m.name == "vllm:num_preemptions":
            out["preemptions"] += int(m.value)
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
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    batch = spec.get("batches") or len(prompts)
    tokens = []
    for i in range(0, len(prompts), batch):
        outs = llm.generate(prompts[i : i + batch], params, use_tqdm=False)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    return {"tokens": tokens, **_metrics(llm)}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        result = main(json.load(f))
    print("RESULT " + json.dumps(result), flush=True)
