"""Prometheus exposition shared by both daemons.

Each daemon keeps its figures where the work happens (counters on the camera objects) and a
collector turns them into metrics at scrape time, so nothing is counted twice and a scrape
costs nothing between scrapes. Names follow the design notes: prefix `adaptcast_`, base units,
`_total` on counters, a `camera` label, no per-session labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


Samples = Iterable[tuple[list[str], float]]


def _family(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, documentation: str,
            labels: list[str], samples: Samples) -> CounterMetricFamily | GaugeMetricFamily:
    family = kind(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, documentation: str, labels: list[str], samples: Samples) -> CounterMetricFamily:
    return _family(CounterMetricFamily, name, documentation, labels, samples)


def gauge(name: str, documentation: str, labels: list[str], samples: Samples) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, name, documentation, labels, samples)


def by_reason(camera: str, counts: Mapping[str, int]) -> list[tuple[list[str], float]]:
    return [([camera, reason], float(n)) for reason, n in sorted(counts.items())]


def metrics_handler(registry: CollectorRegistry):
    """An aiohttp handler serving `registry` in the Prometheus text format."""

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    return handler
