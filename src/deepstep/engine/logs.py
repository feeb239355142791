"""Small helpers for metric records: which way a metric improves, and a one-line rendering."""

from __future__ import annotations


def monitor_mode(metric: str) -> str:
    """'min' for losses and errors, 'max' for scores."""
    name = metric.split("/")[-1]
    return "min" if any(w in name for w in ("loss", "rmse", "mae", "mse", "error", "nll", "elbo", "frechet")) else "max"


def format_logs(logs: dict, keys=None) -> str:
    """`key value` pairs of the float entries of a record, 4 significant digits."""
    parts = []
    for k, v in logs.items():
        if keys is not None and k not in keys:
            continue
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
    return "  ".join(parts)
