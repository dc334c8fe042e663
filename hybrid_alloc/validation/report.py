"""The validation report from the two recorded runs: comparison, capacity, throughput, the plugin's startup
reports; written as report.json, report.md and report.png. Pure functions of the recorded dicts.

A recorded run (dict): {"label", "command", "env" (what the run adds to the environment), "log",
"startup_seconds", "cache_config_info" ({label: value} of vllm:cache_config_info), "capacity_lines" (vLLM's
"KV cache size" / "Maximum concurrency" lines), "plugin_lines" (the "hybrid-alloc:" lines), "nvml" (per GPU
while the server was up, or null), "load": {"seconds", "generated_tokens", "tokens_per_s", "outputs"}}.
"""

from __future__ import annotations

import glob
import json
import os
import re

from hybrid_alloc.report.png import write_png
from hybrid_alloc.validation.reconcile import load_report

SCHEMA = "hybrid-alloc/validation-report/1"
_KV_SIZE = re.compile(r"KV cache size:\s*([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request:\s*([\d.]+)")


def compare(stock: list[list[int]], plugin: list[list[int]]) -> dict:
    """Token-by-token: how many requests produced identical ids, and where the others first differ."""
    differing = []
    for i, (a, b) in enumerate(zip(stock, plugin)):
        if a != b:
            first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            differing.append({"request": i, "first_difference": first, "stock_tokens": len(a),
                              "plugin_tokens": len(b)})
    total = max(len(stock), len(plugin))
    return {"identical": min(len(stock), len(plugin)) - len(differing), "total": total, "differing": differing}


def capacity(run: dict) -> dict:
    """What vLLM reported: block size and blocks (/metrics' vllm:cache_config_info), KV tokens and max
    concurrency (its log lines; vllm_versions.ENGINE_TESTED also has them in cache_config_info, used where the log has none)."""
    info = run.get("cache_config_info") or {}
    out = {"block_size": _int(info.get("block_size")), "num_blocks": _int(info.get("num_gpu_blocks")),
           "kv_tokens": None, "max_concurrency": None, "at_tokens": None}
    for line in run.get("capacity_lines", []):
        if (m := _KV_SIZE.search(line)) and out["kv_tokens"] is None:
            out["kv_tokens"] = int(m.group(1).replace(",", ""))
        if (m := _CONCURRENCY.search(line)) and out["max_concurrency"] is None:
            out["at_tokens"], out["max_concurrency"] = int(m.group(1).replace(",", "")), float(m.group(2))
    if out["kv_tokens"] is None:
        out["kv_tokens"] = _int(info.get("kv_cache_size_tokens"))
    if out["max_concurrency"] is None and _float(info.get("kv_cache_max_concurrency")) is not None:
        out["max_concurrency"] = _float(info.get("kv_cache_max_concurrency"))
        out["at_tokens"] = run.get("max_model_len")
    return out


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def startup_reports(folder: str) -> list[dict]:
    """The plugin's startup reports in ``folder`` (schema checked by reconcile.load_report), per worker."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, "worker-*.json"))):
        report = load_report(path)
        with open(path) as f:
            raw = json.load(f)
        plan, tagged = report.plan_tags.get("kv_cache"), report.allocator_tags.get("kv_cache")
        found.append({
            "file": path, "pid": report.pid, "pp_rank": report.pp_rank, "tp_rank": report.tp_rank,
            "device": raw.get("device", ""), "gpu_uuid": report.gpu_uuid,
            "kv_plan": plan, "kv_allocated": tagged, "kv_exact": plan is not None and plan == tagged,
            "allocator_kv_cache": raw.get("allocator_kv_cache"), "allocator_note": raw.get("allocator_note", ""),
            "budget": raw.get("budget"), "unknown": raw.get("unknown", {}),
            "nvml": raw.get("nvml") or {"available": False, "reason": "not in the report"},
            "reconciliation": raw.get("reconciliation"), "reconciliation_note": raw.get("reconciliation_note", ""),
        })
    return sorted(found, key=lambda r: (r["pp_rank"], r["tp_rank"]))


def build(setup: dict, runs: dict[str, dict], reports: list[dict], nvml_status: dict) -> dict:
    stock, plugin = runs["stock"], runs["plugin"]
    comparison = compare(stock["load"]["outputs"], plugin["load"]["outputs"])
    caps = {label: capacity(run) for label, run in runs.items()}
    tps = {label: run["load"]["tokens_per_s"] for label, run in runs.items()}
    summary = [f"outputs: {comparison['identical']} of {comparison['total']} requests identical token by token"]
    a, b = caps["stock"]["max_concurrency"], caps["plugin"]["max_concurrency"]
    if a is not None and b is not None:
        gain = f" ({b / a:.2f}x)" if a else ""
        at = caps["plugin"]["at_tokens"] or 0
        summary.append(f"max concurrency at {at:,} tokens: stock {a:.2f}, plugin {b:.2f}{gain}")
    if tps["stock"]:
        summary.append(f"throughput: stock {tps['stock']:.1f}, plugin {tps['plugin']:.1f} generated tokens/s "
                       f"({tps['plugin'] / tps['stock']:.2f}x)")
    if not reports:
        summary.append("the plugin wrote no startup report (was it loaded? see the plugin run's log)")
    else:
        exact = sum(r["kv_exact"] for r in reports)
        summary.append(f"KV cache: allocator's tagged bytes = plan on {exact} of {len(reports)} workers")
        verdicts = [r["reconciliation"]["verdict"] for r in reports if r["reconciliation"]]
        if verdicts:
            summary.append("NVML reconciliation: " + ", ".join(verdicts))
    if not nvml_status.get("available"):
        summary.append(f"NVML unavailable: {nvml_status.get('reason', '')}")
    return {"schema": SCHEMA, "setup": setup, "summary": summary, "comparison": comparison, "capacity": caps,
            "tokens_per_s": tps, "nvml": nvml_status, "startup_reports": reports, "runs": runs}


def _fmt(value, spec: str = ",") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    s, runs = report["setup"], report["runs"]
    load = s["load"]
    vllm_args = " ".join(s["vllm_args"]) or "(none)"
    lengths = ", ".join(map(str, load["prompt_tokens"]))
    out = [f"# hybrid-alloc validation: {s['model']}", "",
           f"PP={s['pp']}, TP={s['tp']}, device {s['device']}; vLLM arguments: `{vllm_args}`", "",
           f"Load (each run): {load['requests']} requests at once, prompts of {lengths} token ids in turn "
           f"(seed {load['seed']}), greedy (temperature 0), ignore_eos, max_tokens {load['max_tokens']}.",
           "", "## Summary", ""]
    out += [f"- {line}" for line in report["summary"]]
    out += ["", "## Capacity (as vLLM reports it)", "",
            "| run | block size | blocks | KV cache (tokens) | max concurrency |", "|---|---:|---:|---:|---:|"]
    for label, cap in report["capacity"].items():
        out.append(f"| {label} | {_fmt(cap['block_size'])} | {_fmt(cap['num_blocks'])} | {_fmt(cap['kv_tokens'])} "
                   f"| {_fmt(cap['max_concurrency'], '.2f')} |")
    out += ["", "The plugin's log:", "", "```"] + (runs["plugin"]["plugin_lines"] or ["(no hybrid-alloc: lines)"])
    out += ["```", "", "## Load and throughput", "",
            "tokens/s: the generated tokens of the whole load over its wall time (all requests sent at once, after "
            "one untimed warm-up request); a single short load, so on a busy machine it can swing widely.", "",
            "| run | startup (s) | generated tokens | load (s) | tokens/s |", "|---|---:|---:|---:|---:|"]
    for label, run in runs.items():
        r = run["load"]
        out.append(f"| {label} | {run['startup_seconds']:.1f} | {r['generated_tokens']:,} | {r['seconds']:.2f} "
                   f"| {r['tokens_per_s']:.1f} |")
    c = report["comparison"]
    out += ["", "## Outputs", "", f"{c['identical']} of {c['total']} requests identical token by token."]
    for d in c["differing"]:
        out.append(f"- request {d['request']}: first differs at token {d['first_difference']}")
    out += ["", "## The plugin's startup reports (per worker)", ""]
    if report["startup_reports"]:
        out += ["| PP | TP | device | KV plan (B) | KV allocated (B) | = plan | NVML measured (B) | budget (B) "
                "| verdict |",
                "|---:|---:|---|---:|---:|---|---:|---:|---|"]
        for r in report["startup_reports"]:
            rec = r["reconciliation"] or {}
            nv = r["nvml"]
            measured = nv.get("measured") if nv.get("available") else None
            verdict = rec.get("verdict") or r["reconciliation_note"] or "not reconciled"
            out.append(f"| {r['pp_rank']} | {r['tp_rank']} | {r['device']} | {_fmt(r['kv_plan'])} "
                       f"| {_fmt(r['kv_allocated'])} | {'yes' if r['kv_exact'] else 'no'} | {_fmt(measured)} "
                       f"| {_fmt(rec.get('budget'))} | {verdict} |")
        for r in report["startup_reports"]:
            if not r["nvml"].get("available"):
                out.append(f"\nPP {r['pp_rank']} TP {r['tp_rank']}: NVML unavailable ({r['nvml'].get('reason')})")
    else:
        out.append("None: the plugin wrote no startup report.")
    nv = report["nvml"]
    out += ["", "## NVML", "", "available" if nv.get("available") else f"unavailable: {nv.get('reason')}"]
    for label, run in runs.items():
        for g in run.get("nvml") or []:
            out.append(f"- {label} run, GPU {g['index']} ({g['name']}): {g['used']:,} of {g['total']:,} B used")
    out += ["", "## Launches", ""]
    for label, run in runs.items():
        env = " ".join(f"{k}={v}" for k, v in run["env"].items())
        out += [f"- {label}: `{env} {' '.join(run['command'])}` (log: {run['log']})"]
    return "\n".join(out) + "\n"


def write(report: dict, folder: str) -> dict[str, str]:
    paths = {ext: os.path.join(folder, f"report.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
    write_png(paths["png"], lambda plt: _draw(report, plt))
    return paths


def _draw(report: dict, plt):
    labels = list(report["runs"])
    colors = ["#8c8c8c", "#4c72b0"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    panels = [("max concurrency (vLLM's report)", [report["capacity"][k]["max_concurrency"] or 0 for k in labels]),
              ("generated tokens/s", [report["tokens_per_s"][k] for k in labels])]
    for ax, (title, values) in zip(axes, panels):
        ax.bar(labels, values, color=colors)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax = axes[2]
    workers = report["startup_reports"]
    names = [f"PP{r['pp_rank']} TP{r['tp_rank']}" for r in workers]
    mib = float(1 << 20)
    x = range(len(workers))
    series = [("KV plan", "#55a868", [r["kv_plan"] or 0 for r in workers]),
              ("KV allocated", "#4c72b0", [r["kv_allocated"] or 0 for r in workers])]
    recs = [r["reconciliation"] or {} for r in workers]
    if any(recs):  # NVML reconciled: the measured process use beside the budget it was planned with
        series += [("budget", "#dd8452", [rec.get("budget", 0) for rec in recs]),
                   ("NVML measured", "#c44e52", [rec.get("measured", 0) for rec in recs])]
    width = 0.8 / len(series)
    for k, (name, color, values) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar([i + offset for i in x], [v / mib for v in values], width, label=name, color=color)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("MiB")
    if workers:
        ax.legend(fontsize=8)
    ax.set_title("the plugin's workers (startup reports)" + ("" if any(recs) else "\nno NVML reconciliation"),
                 fontsize=9)
    c = report["comparison"]
    fig.suptitle(f"{report['setup']['model']}: stock vs hybrid-alloc ({report['setup']['device']}, "
                 f"PP={report['setup']['pp']}); outputs identical {c['identical']}/{c['total']}", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.82, bottom=0.12, wspace=0.3)
    return fig
