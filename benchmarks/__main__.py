"""Run every benchmark and print one table per benchmark.

``python -m benchmarks [NAME ...]``; sizes come from env vars documented in each module.
"""

from __future__ import annotations

import sys

from rich.console import Console

from benchmarks import ingest

BENCHMARKS = {"ingest": ingest.main}


def main(argv: list[str]) -> int:
    console = Console()
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        console.print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        console.print(BENCHMARKS[name]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
