"""Output shared by the scene-table benchmarks (bench_retrieval.py, bench_extend.py): run each ``kind:n`` scene,
print its rows as JSON lines with ``--json``, else one markdown table. Imported as a sibling module (the script's
folder is on ``sys.path`` when run as ``python benchmarks/bench_x.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Row = dict[str, Any]


def run_scenes(
    args: argparse.Namespace,
    run_scene: Callable[[str, int, argparse.Namespace], Iterable[Row]],
    cols: Sequence[str],
    stamp: Row | None = None,
) -> None:
    """``run_scene(kind, n, args)`` for each of ``args.scenes`` (``kind:n``), every row extended by ``stamp``;
    rows printed as they come with ``args.json``, else as one table of columns ``cols`` at the end."""
    rows = []
    for spec in args.scenes:
        kind, n = spec.split(":")
        for row in run_scene(kind, int(n), args):
            row.update(stamp or {})
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows, cols)


def print_table(rows: Sequence[Row], cols: Sequence[str]) -> None:
    """``rows`` as a markdown table of columns ``cols`` (blank where a row has no such key)."""
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
