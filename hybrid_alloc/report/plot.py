"""Stacked bars of where each stage's budget goes (stock vs natural vs physical), one panel per length.
Drawn through report.png.write_png (matplotlib only with --plot)."""

from __future__ import annotations

from hybrid_alloc.planner.comparison import LayoutComparison
from hybrid_alloc.planner.usage import CATEGORIES
from hybrid_alloc.report.png import write_png

COLORS = {"attention": "#4c72b0", "state": "#55a868", "padding": "#c44e52", "rounding": "#dd8452",
          "unused": "#d9d9d9"}
LAYOUTS = ("stock", "natural", "physical")


def write_plot(trace: LayoutComparison, path: str) -> None:
    write_png(path, lambda plt: _draw(trace, plt))


def _draw(trace: LayoutComparison, plt):
    gib = float(1 << 30)
    fig, axes = plt.subplots(
        1, len(trace.capacities), figsize=(4.2 * len(trace.capacities), 4.5), sharey=True, squeeze=False
    )
    for ax, capacity in zip(axes[0], trace.capacities):
        splits = dict(zip(LAYOUTS, (capacity.stock_split, capacity.natural_split, capacity.physical_split)))
        bars = [(stage, layout) for stage in range(trace.settings.pp) for layout in LAYOUTS]
        bottoms = [0.0] * len(bars)
        for category in CATEGORIES:
            heights = [
                getattr(splits[layout][stage], category) / gib if splits[layout] else 0.0 for stage, layout in bars
            ]
            ax.bar(range(len(bars)), heights, bottom=bottoms, color=COLORS[category], label=category)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
        labels = [f"{layout}\nstage {stage}" if trace.settings.pp > 1 else layout for stage, layout in bars]
        ax.set_xticks(range(len(bars)), labels, fontsize=7)
        ax.set_title(f"{capacity.num_tokens:,}-token requests\nstock {capacity.stock or 'refused'}, "
                     f"natural {capacity.natural or 'refused'}, physical {capacity.physical}", fontsize=9)
    axes[0][0].set_ylabel("GiB of the stage's KV cache budget")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(CATEGORIES), fontsize=8)
    fig.suptitle(f"{trace.layout.name}: where the KV cache bytes go ({trace.settings.hardware}, "
                 f"PP={trace.settings.pp})", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.8, bottom=0.2, wspace=0.05)  # tight_layout: slow
    return fig
