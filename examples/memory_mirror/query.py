"""Print the mirror: memory id, deleted flag, categories and text, one memory a line.

Usage, from this directory::

    python query.py                  # reads $MIRROR_DB, else mirror.sqlite3
    python query.py --db other.sqlite3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import mirror

HEADER = ("MEMORY ID", "DELETED", "CATEGORIES", "MEMORY")


def table(memories: list[mirror.Mirrored]) -> str:
    rows = [HEADER] + [
        (
            memory.memory_id,
            "yes" if memory.deleted else "no",
            ",".join(memory.categories) or "-",
            memory.memory if memory.memory is not None else "-",
        )
        for memory in memories
    ]
    # Pad every column but the last, the memory text, to its widest cell.
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=mirror.db_path(), help="the mirror's SQLite file")
    args = parser.parse_args(argv)
    try:
        memories = mirror.read(args.db)
    except FileNotFoundError as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 1
    if not memories:
        print(f"The mirror at {args.db} holds no memories yet.")
        return 0
    print(table(memories))
    return 0


if __name__ == "__main__":
    sys.exit(main())
