"""Result tables in the papers' layout: one row per method, H/M/N at each cutoff."""

from __future__ import annotations

from dataclasses import dataclass

from .evaluation import metric_names


@dataclass
class Row:
    method: str
    metrics: dict[str, float]
    num_parameters: int | None = None
    seconds_per_epoch: float | None = None


def format_table(rows: list[Row], cutoffs: tuple[int, ...]) -> str:
    """Fixed-width text table: method, parameters, metrics and, when known,
    seconds per training epoch."""
    names = metric_names(cutoffs)
    timed = any(row.seconds_per_epoch is not None for row in rows)
    header = ["Method", "#Params", *names] + (["s/epoch"] if timed else [])
    lines = [header]
    for row in rows:
        line = [
            row.method,
            f"{row.num_parameters:,}" if row.num_parameters is not None else "-",
            *(f"{row.metrics[name]:.4f}" if name in row.metrics else "-" for name in names),
        ]
        if timed:
            line.append(f"{row.seconds_per_epoch:.2f}" if row.seconds_per_epoch is not None else "-")
        lines.append(line)
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        out.append("  ".join(cells))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
