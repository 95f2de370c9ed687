"""Prometheus's text format, rendered by prometheus_client from the families of model.py.

prometheus_client is imported only when something is rendered, so an agent without `[metrics]`
never loads it. CONTENT_TYPE is fixed at the classic format's version 0.0.4: Debian's
prometheus_client 0.16 (Debian 12) and 0.21 (Debian 13) render that text and say so; newer PyPI
releases (0.26) render the same text for the agent's names but announce it as version 1.0.0, which
a Prometheus before 3.0 does not know. Every Prometheus since 2.0 parses 0.0.4.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .model import COUNTER, Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Families:
    """A prometheus_client collector over families that are already computed."""

    def __init__(self, families: Sequence[Family]):
        self.families = families

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for family in self.families:
            spec = family.spec
            kind = CounterMetricFamily if spec.kind == COUNTER else GaugeMetricFamily
            metric = kind(spec.name, spec.help, labels=list(spec.labels))
            for labels, value in family.samples:
                metric.add_metric(list(labels), value)
            yield metric


def process_collector() -> Any:
    """prometheus_client's process_* metrics of this process (CPU, memory, open files), unregistered."""
    from prometheus_client.process_collector import ProcessCollector

    return ProcessCollector(registry=None)


def render(families: Sequence[Family], extra: Sequence[Any] = ()) -> bytes:
    """Return the text format of `families` and of the `extra` prometheus_client collectors."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    for collector in extra:
        registry.register(collector)
    data: bytes = generate_latest(registry)
    return data
