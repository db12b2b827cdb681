"""The collection jobs, by source name. Each module exposes ``run(ctx) -> list[ScopeOutcome]``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from collector.jobs.base import JobContext, ScopeOutcome

#: Source name -> module, in the order one collection cycle runs them (discovery first: the
#: other sources map Azure's names to the deployments it found).
SOURCES = {
    "discovery": "collector.jobs.discovery",
    "metrics": "collector.jobs.metrics",
    "logs": "collector.jobs.logs",
    "costs": "collector.jobs.costs",
    "capture": "collector.jobs.capture",
    "retention": "collector.jobs.retention",
    "alerts": "alerts.job",
}


def job(source: str) -> Callable[[JobContext], list[ScopeOutcome]]:
    return importlib.import_module(SOURCES[source]).run
