"""The one plain-text / Markdown table formatter (CV results, demo, benchmarks).

Kept free of TensorFlow so the CLI and pipelines can print tables without loading it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable


def format_cell(value: Any, float_format: str = ".4g") -> str:
    """``-`` for None, floats with ``float_format`` (inf/nan as words), anything else str()."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, float_format) if math.isfinite(value) else str(value)
    return str(value)


def format_table(rows: Iterable[dict], *, markdown: bool = False, float_format: str = ".4g",
                 columns: list[str] | None = None, formats: dict[str, str] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table (or a GitHub Markdown table).

    Args:
      rows: one dict per row; missing keys print as ``-``.
      markdown: emit ``| a | b |`` Markdown instead of aligned text.
      float_format: format spec of float cells.
      columns: column order (default: keys in first-seen order).
      formats: per-column float format overriding ``float_format``.

    Returns:
      The table; ``(no rows)`` for an empty input. In text mode the first column is
      left-aligned (labels), the others right-aligned (numbers).
    """
    rows = list(rows)
    if not rows:
        return "(no rows)"
    keys = list(columns or [])
    if not keys:
        for r in rows:
            keys += [k for k in r if k not in keys]
    formats = formats or {}
    cells = [[format_cell(r.get(k), formats.get(k, float_format)) for k in keys] for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(cs) + " |" for cs in [keys, ["---"] * len(keys), *cells])
    widths = [max(len(k), *(len(c[j]) for c in cells)) for j, k in enumerate(keys)]
    line = lambda cs: "  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                for j, (c, w) in enumerate(zip(cs, widths)))
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])
