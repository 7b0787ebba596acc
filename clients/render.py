"""Tables for the CLI: rich when it is installed, aligned plain text when it is not (httpx is the only
hard dependency of the client)."""
from __future__ import annotations

import sys
from typing import Sequence, TextIO

try:
    from rich import box
    from rich.console import Console
    from rich.table import Table
except ImportError:  # pragma: no cover - exercised through use_rich=False
    Console = None


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
                numeric: Sequence[bool] = (), file: TextIO | None = None, use_rich: bool | None = None) -> None:
    """`numeric[i]` right-aligns column i. Cells are already formatted strings."""
    file = file or sys.stdout
    numeric = list(numeric) + [False] * (len(headers) - len(numeric))
    if use_rich is None:
        use_rich = Console is not None
    if use_rich:
        table = Table(*headers, title=title, box=box.SIMPLE_HEAD, show_edge=False, title_justify="left")
        for column, right in zip(table.columns, numeric):
            column.justify = "right" if right else "left"
        for row in rows:
            table.add_row(*row)
        # highlight=False: no guessing colours for numbers; a wide width so a pipe gets whole rows.
        Console(file=file, highlight=False, width=None if file.isatty() else 200).print(table)
        return
    print(plain_table(headers, rows, title=title, numeric=numeric), file=file)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
                numeric: Sequence[bool] = ()) -> str:
    numeric = list(numeric) + [False] * (len(headers) - len(numeric))
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if right else str(c).ljust(w)
                         for c, w, right in zip(cells, widths, numeric)).rstrip()

    lines = ([title] if title else []) + [line(headers), line("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(lines)
