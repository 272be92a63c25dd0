"""Prometheus exposition shared by both daemons.

Each daemon keeps its figures where the work happens (counters on the camera objects) and a
collector turns them into metrics at scrape time, so nothing is counted twice and a scrape
costs nothing between scrapes. Names follow the design notes: prefix `adaptcast_`, base units,
`_total` on counters, a `camera` label, no per-session labels.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

Samples = Iterable[tuple[list[str], float]]
Reason = TypeVar("Reason", bound=str)
"""A counter's reasons: a component's Literal type, so that its counts and its known reasons agree."""


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)


def _family(kind: type[Family], name: str, documentation: str, labels: list[str], samples: Samples) -> Family:
    family = kind(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, documentation: str, labels: list[str], samples: Samples) -> CounterMetricFamily:
    return _family(CounterMetricFamily, name, documentation, labels, samples)


def gauge(name: str, documentation: str, labels: list[str], samples: Samples) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, name, documentation, labels, samples)


@dataclass
class Histogram:
    """Observations counted in buckets, kept on the object that makes them (a collector
    exports it at scrape time, like the daemons' counters)."""

    bounds: tuple[float, ...]
    """Upper bounds of the buckets, increasing; a last bucket (+Inf) takes the rest."""
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> Histogram:
        """A copy that later observations leave as it is (for a component's stats snapshot)."""
        copy = Histogram(self.bounds)
        copy.counts, copy.total = list(self.counts), self.total
        return copy


def histogram(name: str, documentation: str, labels: list[str],
              samples: Iterable[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, observed in samples:
        cumulative = map(float, itertools.accumulate(observed.counts))
        family.add_metric(values, list(zip([*map(str, observed.bounds), "+Inf"], cumulative)), observed.total)
    return family


def build_info(role: str, model: str, model_sha256: str) -> GaugeMetricFamily:
    """`adaptcast_build_info`: what runs, so that a dashboard can tell when the two ends hold
    different base models (they must not) or versions."""
    try:
        package_version = version("adaptcast")
    except PackageNotFoundError:  # run from a source tree that was never installed
        package_version = "unknown"
    return gauge("adaptcast_build_info", "The adaptcast version, base model and role of this process (always 1).",
                 ["version", "model", "model_sha256", "role"], [([package_version, model, model_sha256, role], 1.0)])


def with_zeros(counts: Mapping[Reason, int], known: Iterable[Reason] = ()) -> dict[Reason, int]:
    """`counts` with a 0 for every `known` reason not counted yet, sorted by reason: a series that
    exists from start-up is one that dashboards and `rate()` alerts see rise from 0, where a
    series born at its first event has no rate for that event."""
    return dict(sorted({**dict.fromkeys(known, 0), **counts}.items()))


def by_reason(camera: str, counts: Mapping[Reason, int], known: Iterable[Reason] = ()) -> list[tuple[list[str], float]]:
    """Samples labelled camera and reason: the counted reasons, and 0 for the `known` ones not counted."""
    return [([camera, reason], float(n)) for reason, n in with_zeros(counts, known).items()]


def daemon_registry(*collectors: Collector) -> CollectorRegistry:
    """A daemon's registry: its own collectors, and prometheus-client's standard process and Python
    ones (memory, CPU, open files, garbage collections), which operators' dashboards and alerts
    expect of any exporter and which a registry of our own does not get by default."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def metrics_handler(registry: CollectorRegistry):
    """An aiohttp handler serving `registry` in the Prometheus text format."""

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    return handler
