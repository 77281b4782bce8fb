"""Markdown tables: every report ffd writes (eval, CV, sweeps, bench) formats them here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, None empty, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> list[str]:
    """The lines of a Markdown table (cells through ``cell``)."""
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    lines += [f"| {' | '.join(cell(v, digits) for v in row)} |" for row in rows]
    return lines
