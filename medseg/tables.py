"""Tables without pandas: aligned text for terminals and notebooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_rows(rows: Sequence[Mapping[str, object]]) -> str:
    """Return `rows` (same keys each, the column titles) as a right-aligned text table."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [columns] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells)
