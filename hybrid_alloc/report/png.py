"""Writing a matplotlib figure to a PNG for `--plot`: the file is opened before matplotlib is imported (a bad
path fails at once, without the slow import), and matplotlib is imported only here, with the Agg backend."""

from __future__ import annotations

from typing import Callable

from hybrid_alloc.errors import UserError


def write_png(path: str, draw: Callable) -> None:
    """Opens ``path``, calls ``draw(plt)`` to build one figure and saves it there."""
    try:
        out = open(path, "wb")
    except OSError as error:
        raise UserError(f"--plot {path}: cannot write the file ({error.strerror})") from None
    with out:
        import matplotlib  # lazy: slow import, only for --plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = draw(plt)
        fig.savefig(out, format="png", dpi=120)
        plt.close(fig)
