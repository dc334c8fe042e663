"""Presenting a trace: rich tables (render), JSON (json_report), a matplotlib plot (plot)."""
