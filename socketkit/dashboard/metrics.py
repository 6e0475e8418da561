"""Metrics for monitoring: `/metrics` in the Prometheus text exposition format.

Services record latencies into light histograms here (`observe("http_request", seconds)`: a bisect and two
additions, no lock, no import of prometheus_client on a hot path); the exposition is prometheus_client's own
(`generate_latest` over a collector that reads these histograms and every service's socket counters), so the
format is exactly what Prometheus scrapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

# Prometheus' default buckets, a little wider at the top (a slow SMTP client, a long transfer).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HELP = {
    "http_request": ("socketkit_http_request_duration_seconds", "HTTP request duration, head in to response out"),
    "smtp_delivery": ("socketkit_smtp_delivery_seconds", "SMTP message stored durably, end of DATA to the 250"),
    "chat_fanout": ("socketkit_chat_fanout_seconds", "chat message fanned out to every member's send queue"),
}


class Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


HISTOGRAMS: dict[str, Histogram] = {name: Histogram() for name in HELP}


def observe(name: str, seconds: float) -> None:
    h = HISTOGRAMS.get(name)
    if h is not None:
        h.observe(seconds)


class _Collector:
    """Reads everything at scrape time: nothing is copied between scrapes."""

    def __init__(self, status: Callable[[], list[dict[str, Any]]]) -> None:
        self.status = status

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        rows = self.status()
        gauge = GaugeMetricFamily("socketkit_open_connections", "open connections", labels=["service"])
        counters = {
            "accepted": CounterMetricFamily("socketkit_connections_accepted", "connections accepted", labels=["service"]),
            "refused": CounterMetricFamily("socketkit_connections_refused", "connections refused by a limit",
                                           labels=["service"]),
            "errors": CounterMetricFamily("socketkit_connection_errors", "connections that ended in an error",
                                          labels=["service"]),
            "bytes_in": CounterMetricFamily("socketkit_received_bytes", "bytes received", labels=["service"]),
            "bytes_out": CounterMetricFamily("socketkit_sent_bytes", "bytes sent", labels=["service"]),
            "units": CounterMetricFamily("socketkit_units", "requests, messages, transfers or commands handled",
                                         labels=["service"]),
        }
        detail = GaugeMetricFamily("socketkit_service_detail", "a service's own figures (see the `figure` label)",
                                   labels=["service", "figure"])
        for row in rows:
            gauge.add_metric([row["name"]], row.get("open", 0))
            for key, family in counters.items():
                family.add_metric([row["name"]], row.get(key, 0))
            for key, value in (row.get("details") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    detail.add_metric([row["name"], key], value)
        yield gauge
        yield from counters.values()
        yield detail
        for key, (name, text) in HELP.items():
            h = HISTOGRAMS[key]
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family = HistogramMetricFamily(name, text)
            family.add_metric([], cumulative, sum_value=h.total)
            yield family


def exposition(status: Callable[[], list[dict[str, Any]]]) -> tuple[bytes, str]:
    """(body, content type) for a scrape of /metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(status))
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["BUCKETS", "HISTOGRAMS", "Histogram", "exposition", "observe"]
