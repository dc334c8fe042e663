"""Human-readable numbers for the tables."""

from __future__ import annotations


def fmt_bytes(n: int) -> str:
    """Binary units, about three significant figures: 512 B, 64.0 KiB, 2.06 MiB, 11.2 GiB."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "B":
        return f"{n} B"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def fmt_share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
