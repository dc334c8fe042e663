"""Stacked bars of where each stage's budget goes (stock vs natural vs physical), one panel per length.
matplotlib is imported here only, and only with --plot."""

from __future__ import annotations

from hybrid_alloc.errors import UserError
from hybrid_alloc.planner.trace import Trace
from hybrid_alloc.planner.usage import CATEGORIES

COLORS = {"attention": "#4c72b0", "state": "#55a868", "padding": "#c44e52", "rounding": "#dd8452",
          "unused": "#d9d9d9"}
LAYOUTS = ("stock", "natural", "physical")


def write_plot(trace: Trace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = float(1 << 30)
    fig, axes = plt.subplots(
        1, len(trace.capacities), figsize=(4.2 * len(trace.capacities), 4.5), sharey=True, squeeze=False
    )
    for ax, capacity in zip(axes[0], trace.capacities):
        splits = dict(zip(LAYOUTS, (capacity.stock_split, capacity.natural_split, capacity.physical_split)))
        labels, bottoms, x = [], [], 0
        for stage in range(trace.settings.pp):
            for layout in LAYOUTS:
                split = splits[layout]
                labels.append(f"{layout}\nstage {stage}" if trace.settings.pp > 1 else layout)
                bottom = 0.0
                for category in CATEGORIES:
                    value = getattr(split[stage], category) / gib if split else 0.0
                    ax.bar(x, value, bottom=bottom, color=COLORS[category],
                           label=category if x == 0 else None)
                    bottom += value
                bottoms.append(bottom)
                x += 1
        ax.set_xticks(range(x), labels, fontsize=7)
        ax.set_title(f"{capacity.num_tokens:,}-token requests\nstock {capacity.stock or 'refused'}, "
                     f"natural {capacity.natural}, physical {capacity.physical}", fontsize=9)
    axes[0][0].set_ylabel("GiB of the stage's KV cache budget")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{trace.layout.name}: where the KV cache bytes go ({trace.settings.hardware}, "
                 f"PP={trace.settings.pp})", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as error:
        raise UserError(f"--plot {path}: cannot write the file ({error.strerror})") from None
    finally:
        plt.close(fig)
