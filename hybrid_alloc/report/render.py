"""The trace as rich tables: budget, one table per stage (stock vs natural), capacity, pipeline."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from hybrid_alloc.models.max_model_len import of_layout
from hybrid_alloc.planner.pipeline import pp_indices
from hybrid_alloc.planner.comparison import LayoutComparison, StartupRefusal
from hybrid_alloc.planner.usage import CATEGORIES
from hybrid_alloc.report.units import fmt_bytes, fmt_share


def print_trace(trace: LayoutComparison | StartupRefusal, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_header(trace))
    if isinstance(trace, StartupRefusal):
        for line in _refusal_lines(trace):
            console.print(line)
        return
    console.print(_budget_table(trace))
    for index in range(trace.settings.pp):
        console.print(_stage_table(trace, index))
    console.print(_capacity_table(trace))
    for line in _footer(trace):
        console.print(line)


def _header(trace: LayoutComparison | StartupRefusal) -> str:
    s, layout = trace.settings, trace.layout
    kinds = Counter(layer.kind for layer in layout.layers)
    layers = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    dtype = layout.resolve_kv_cache_dtype(s.kv_cache_dtype)
    gpus = s.pp * s.tp
    return (
        f"[bold]{layout.name}[/bold] ({layers}) on {gpus}x {trace.hardware.description}, "
        f"PP={s.pp} TP={s.tp}, vLLM {s.vllm_version}\n"
        f"max_model_len {trace.max_model_len:,}, max_num_seqs {s.max_num_seqs}, KV cache {dtype}, "
        f"prefix caching {'on' if s.prefix_caching else 'off'} (mamba_cache_mode {s.mamba_cache_mode})"
        + (f", {s.num_speculative_tokens} speculative tokens" if s.num_speculative_tokens else "")
        + _vision_line(trace)
        + _cpu_rule_line(trace)
    )


def _vision_line(trace: LayoutComparison | StartupRefusal) -> str:
    """Whether a vision-language model's vision tower is in the plan (vLLM's --language-model-only)."""
    layout = trace.layout
    if not layout.is_multimodal:
        return ""
    if trace.settings.language_model_only:
        return "\nlanguage model only (--language-model-only): the vision tower is not loaded"
    if not layout.encoder_weight_bytes:
        return ""
    counted = "" if trace.settings.kv_cache_memory else ": its weights and profiling peak count on stage 0"
    return f"\nvision tower loaded (no --language-model-only){counted}"


def _refusal_lines(trace: StartupRefusal) -> list[str]:
    derived = of_layout(trace.layout)
    return [
        f"[red]vLLM refuses to start[/red] (stock and natural alike: ModelConfig checks max_model_len before "
        f"any KV cache exists): {trace.error}",
        f"This config allows max_model_len up to {int(derived.value):,} ({derived.key}); "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 in the environment lets vLLM, and the trace, go on.",
    ]


def _cpu_rule_line(trace: LayoutComparison | StartupRefusal) -> str:
    rule = trace.cpu_rule
    if rule is None:
        return ""
    dtypes = trace.layout.state_dtypes
    cpu = "an AVX512-BF16 CPU" if rule.avx512_bf16 else "a CPU without AVX512-BF16"
    source = "this machine's" if rule.source == "host" else "as stated"
    return f"\nCPU backend rules for {cpu} ({source}): state dtypes {', '.join(dtypes) or '-'}"


def _budget_table(trace: LayoutComparison) -> Table:
    table = Table(title="KV cache budget per GPU", title_justify="left")
    table.add_column("")
    for budget in trace.budgets:
        table.add_column(f"stage {budget.stage}", justify="right")
    table.add_column("")
    # Lines differ per stage (embeddings, LM head): one row per label, in first-seen order.
    labels = list(dict.fromkeys(line.label for budget in trace.budgets for line in budget.lines))
    for label in labels:
        cells, estimate = [], False
        for budget in trace.budgets:
            line = next((line for line in budget.lines if line.label == label), None)
            cells.append(fmt_bytes(line.bytes) if line else "")
            estimate |= bool(line and line.estimate)
        table.add_row(label, *cells, "[yellow]estimate[/yellow]" if estimate else "")
    estimated = any(budget.estimated for budget in trace.budgets)
    table.add_row(
        "[bold]KV cache budget[/bold]",
        *(f"[bold]{fmt_bytes(budget.bytes)}[/bold]" for budget in trace.budgets),
        "[yellow]estimate[/yellow]" if estimated else "",
    )
    return table


def _stage_table(trace: LayoutComparison, index: int) -> Table:
    s = trace.settings
    stock, natural = trace.stock.stages[index], trace.natural.stages[index]
    start, end = pp_indices(trace.layout.num_decoder_layers, index, s.pp, s.pp_layer_partition)
    kinds = Counter(
        layer.kind for layer in trace.layout.layers if start <= layer.decoder_layer < end
    )
    layers = ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "no cache layers"
    table = Table(
        title=f"Stage {index}: decoder layers {start}-{end - 1} ({layers}), "
        f"budget {fmt_bytes(trace.budgets[index].bytes)}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("stock vLLM", justify="right")
    table.add_column("natural", justify="right")
    table.add_column("physical need", justify="right")

    block = trace.natural.attention_block_size
    table.add_row("attention block", f"{stock.block_size} tokens", f"{block} tokens" if block else "-", "1 token")
    table.add_row("attention page", _b(stock.attention_page_bytes), _b(natural.attention_page_bytes), "-")
    padded = stock.mamba_page_size_padded
    stock_state = _b(stock.state_page_bytes)
    if padded and stock.state_page_bytes:
        stock_state += f" -> {fmt_bytes(padded)} (+{fmt_share(padded - stock.state_page_bytes, stock.state_page_bytes)})"
    table.add_row("state page", stock_state, _b(natural.state_page_bytes), _b(natural.state_page_bytes))
    if natural.num_state_layers and natural.num_attention_layers:
        unused = natural.unused_state_pages_per_slot
        table.add_row(
            "state slot",
            _stock_state_blocks(stock),
            f"{trace.natural.state_slots_per_request} x {natural.state_slot_blocks} blocks, "
            f"r={natural.state_layers_per_tensor}"
            + (f", {unused} unused" if unused else "")
            + (f", {natural.state_region_layers} in a state region" if natural.state_region_layers else ""),
            "-",
        )
    table.add_row("bytes per block", _b(stock.bytes_per_block), _b(natural.bytes_per_block), "-")
    table.add_row("blocks", f"{stock.num_blocks:,}", f"{natural.num_blocks:,}", "-")
    table.add_row(
        "  stage alone", f"{stock.num_blocks_alone:,}", f"{natural.max_blocks:,}", "-"
    )
    table.add_row("allocated", _b(stock.kv_cache_memory_bytes), _b(natural.bytes), "-")

    longest = trace.capacities[-1]
    table.add_section()
    table.add_row(f"[bold]{longest.num_tokens:,}-token reqs[/bold]", "", "", "")
    splits = (longest.stock_split, longest.natural_split, longest.physical_split)
    budget = trace.budgets[index].bytes
    table.add_row("requests", *(str(sp[index].requests) if sp else "refused" for sp in splits))
    for category in CATEGORIES:
        table.add_row(
            f"  {category}",
            *(_split_cell(getattr(sp[index], category), budget) if sp else "-" for sp in splits),
        )
    return table


def _capacity_table(trace: LayoutComparison) -> Table:
    s = trace.settings
    stock, natural = trace.stock, trace.natural
    table = Table(
        title=f"Requests held at once (at most max_num_seqs={s.max_num_seqs}); vLLM's log lines "
        f"for max_model_len {trace.max_model_len:,}",
        title_justify="left",
    )
    for name in ("tokens", "stock vLLM", "natural", "physical", "stock/phys", "natural/phys"):
        table.add_column(name, justify="right")
    for c in trace.capacities:
        table.add_row(
            f"{c.num_tokens:,}",
            _count(c.stock),
            _count(c.natural),
            f"{c.physical:,}",
            _ratio(c.stock, c.physical),
            _ratio(c.natural, c.physical),
        )
    table.add_section()
    table.add_row(
        "KV tokens",
        "refused" if stock.error else f"{stock.kv_cache_size_tokens:,}",
        "refused" if natural.error else f"{natural.kv_cache_size_tokens:,}",
        "", "", "",
    )
    table.add_row(
        "concurrency",
        "refused" if stock.error else f"{stock.max_concurrency:.2f}x",
        "refused" if natural.error else f"{natural.max_concurrency:.2f}x",
        "", "", "",
    )
    return table


def _count(n: int | None) -> str:
    return "refused" if n is None else f"{n:,}"


def _ratio(n: int | None, physical: int) -> str:
    return "-" if n is None or not physical else f"{n / physical:.2f}"


def _footer(trace: LayoutComparison) -> list[str]:
    lines = []
    natural, longest = trace.natural, trace.capacities[-1]
    if trace.stock.error:
        lines.append(f"[red]stock vLLM refuses to start:[/red] {trace.stock.error}")
    if natural.error:
        lines.append(f"[red]the natural layout (hybrid-alloc's plugin) refuses to start:[/red] {natural.error}")
    elif trace.stock.error and longest.natural:
        lines.append(
            f"[green]The natural layout starts where stock vLLM refuses:[/green] it holds {longest.natural:,} "
            f"request(s) of max_model_len {trace.max_model_len:,} tokens at once."
        )
    lines += _concurrency_lines(trace)
    if natural.state_slots_per_request:
        lines.append(
            f"A request holds {natural.state_slots_per_request} state slot(s) of {natural.state_slot_blocks} "
            f"blocks (natural); stock vLLM charges it {_stock_state_blocks(trace.stock.stages[0])} "
            f"(MambaSpec, mamba_cache_mode {trace.settings.mamba_cache_mode})."
        )
    if natural.checkpoint_interval:
        lines.append(
            f"State checkpoints (natural): one slot ({fmt_bytes(natural.checkpoint_bytes)}) every "
            f"{natural.checkpoint_interval:,} tokens, cached and evictable, not charged at admission."
        )
    if trace.settings.pp > 1:
        stock_neck = min(trace.stock.stages, key=lambda st: st.num_blocks_alone).stage
        lines.append(f"Bottleneck stage: {stock_neck} (stock), {natural.bottleneck_stage} (natural).")
        for p in trace.partitions:
            lines.append(
                f"Suggestion ({p.layout}): {p.env} (now {','.join(map(str, p.current))}): max concurrency "
                f"{p.current_max_concurrency:.2f}x -> {p.max_concurrency:.2f}x ({100 * p.gain:+.1f}%)"
            )
        if not trace.partitions:
            lines.append("No other layer partition gives more capacity.")
    lines += [f"Note: {note}" for note in (*trace.stock.notes, *natural.notes, *trace.layout.notes)]
    return lines


def _concurrency_lines(trace: LayoutComparison) -> list[str]:
    """Where vLLM's logged concurrency reads more max_model_len requests than are held at once (README:
    "Requests held at once")."""
    stock, natural, longest = trace.stock, trace.natural, trace.capacities[-1]
    rows = (
        ("stock vLLM", longest.stock, stock.max_concurrency, stock.num_blocks, stock.blocks_per_request,
         "block 0 is vLLM's null block"),
        ("natural", longest.natural, natural.max_concurrency, natural.num_blocks,
         natural.blocks_per_request(trace.max_model_len),
         "block 0 is vLLM's null block" + (" and a state slot takes a whole aligned run above run 0"
                                            if natural.state_slots_per_request else "")),
    )
    lines = []
    for name, held, concurrency, num_blocks, per_request, why in rows:
        if held is None or held == trace.settings.max_num_seqs or int(concurrency) <= held:
            continue
        lines.append(
            f"{name}: {held:,} request(s) of {trace.max_model_len:,} tokens held at once where vLLM's log line "
            f"reads {concurrency:.2f}x: it divides all {num_blocks:,} blocks by a request's {per_request:,}, "
            f"but {why}."
        )
    return lines


def _stock_state_blocks(stage) -> str:
    counts = Counter(group.blocks_per_request for group in stage.groups if group.kind != "attention")
    return ", ".join(f"{blocks} blocks x {n} groups" for blocks, n in counts.items())


def _b(n: int) -> str:
    return fmt_bytes(n) if n else "-"


def _split_cell(part: int, budget: int) -> str:
    return f"{fmt_bytes(part)} ({fmt_share(part, budget)})"
