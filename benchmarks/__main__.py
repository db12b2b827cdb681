"""Run every benchmark and print one table per benchmark.

``python -m benchmarks [NAME ...]``; sizes come from env vars documented in each module.
"""

from __future__ import annotations

import importlib
import sys

from rich.console import Console

#: Benchmark name -> module with a ``main() -> rich.table.Table``.
BENCHMARKS = {
    "ingest": "benchmarks.ingest",
    "collector": "benchmarks.collector",
    "capture": "benchmarks.capture",
    "backfill": "benchmarks.backfill",
    "dashboard": "benchmarks.dashboard",
}


def main(argv: list[str]) -> int:
    console = Console(width=max(Console().width, 140))
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        console.print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        console.print(importlib.import_module(BENCHMARKS[name]).main())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
