"""The fixed short load: N prompts of token ids (seeded, so both runs send the same), sent together to the
OpenAI completions API, greedy, ``ignore_eos``; the generated token ids and the tokens per second."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.bundled import find_bundled

SEED = 0
FALLBACK_VOCAB = 32000


def vocab_size(source: str) -> int:
    """The vocabulary of the served model, from its config.json (a folder, a file or a bundled config);
    32000 where none is readable."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        found = find_bundled(source)
        path = found[1] if found else None
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        data = {}
    for cfg in (data, data.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return FALLBACK_VOCAB


def prompts(requests: int, lengths: tuple[int, ...], vocab: int, seed: int = SEED) -> list[list[int]]:
    """Prompt i has lengths[i % len(lengths)] ids, drawn from the ordinary part of the vocabulary (above the
    special ids at the start, below 32000)."""
    rng = random.Random(seed)
    low, high = min(100, vocab // 8), min(vocab, FALLBACK_VOCAB)
    return [[rng.randrange(low, high) for _ in range(lengths[i % len(lengths)])] for i in range(requests)]


def served_model(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
        return json.load(r)["data"][0]["id"]


def complete(url: str, model: str, prompt: list[int], max_tokens: int, timeout: float) -> list[int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True}
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            choice = json.load(r)["choices"][0]
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300].replace("\n", " ")
        raise UserError(f"the server refused a request ({error.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"request to {url} failed: {error}") from None
    ids = choice.get("token_ids")
    if ids is None:
        raise UserError("the server returned no token ids (vLLM too old for `return_token_ids`?)")
    return list(ids)


def run_load(url: str, model: str, prompt_ids: list[list[int]], max_tokens: int, timeout: float = 1800,
             advance: Callable[[], None] = lambda: None) -> dict:
    """All prompts at once; {"seconds", "generated_tokens", "tokens_per_s", "outputs"} (outputs in prompt order)."""
    outputs: list[list[int] | None] = [None] * len(prompt_ids)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(prompt_ids))) as pool:
        futures = {pool.submit(complete, url, model, p, max_tokens, timeout): i for i, p in enumerate(prompt_ids)}
        for future in as_completed(futures):
            outputs[futures[future]] = future.result()
            advance()
    seconds = time.perf_counter() - start
    generated = sum(len(o) for o in outputs)
    return {"seconds": seconds, "generated_tokens": generated,
            "tokens_per_s": generated / seconds if seconds > 0 else 0.0, "outputs": outputs}
