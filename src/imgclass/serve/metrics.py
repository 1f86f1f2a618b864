"""Prometheus text exposition (format 0.0.4) of the server's counters and histograms.

Written by hand: ``prometheus_client`` is not a dependency, and the server needs three counters and
three histograms, which take less code than wiring a registry. Thread-safe (one lock): requests are
counted on the event loop and batches in the model thread.

With ``imgclass serve --workers N`` every worker process keeps its own numbers; a scrape reaches one
of them.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) and not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = tuple(str(v) for v in labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(tuple(str(v) for v in labels), 0.0)

    def expose(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self.values.items())]
        return out


class Gauge(Counter):
    def set(self, value: float, *labels: str) -> None:
        self.values[tuple(str(v) for v in labels)] = float(value)

    def expose(self) -> list[str]:
        return [line.replace(" counter", " gauge") if line.startswith("# TYPE") else line
                for line in super().expose()]


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        key = tuple(str(v) for v in labels)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0] * len(self.buckets) + [0.0, 0]
        i = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= its upper bound
        if i < len(self.buckets):
            s[i] += 1
        s[-2] += value
        s[-1] += 1

    def count(self, *labels: str) -> int:
        s = self.series.get(tuple(str(v) for v in labels))
        return s[-1] if s else 0

    def expose(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, s in sorted(self.series.items()):
            cum = 0
            for b, n in zip(self.buckets, s):
                cum += n
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cum}")
            le = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {s[-1]}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {s[-1]}")
        return out


class ServerMetrics:
    """Everything ``GET /metrics`` reports."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = Counter("imgclass_requests_total", "HTTP requests by endpoint, method and status code.",
                                ("endpoint", "method", "status"))
        self.latency = Histogram("imgclass_request_duration_seconds", "HTTP request latency by endpoint.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.batch_size = Histogram("imgclass_batch_size", "Images per model call (micro-batch size).", BATCH_BUCKETS)
        self.batch_latency = Histogram("imgclass_batch_duration_seconds", "Time of one model call on a micro-batch.",
                                       LATENCY_BUCKETS)
        self.images = Counter("imgclass_images_total", "Images received, by outcome (ok or the error code).",
                              ("outcome",))
        self.queue = Gauge("imgclass_queue_depth", "Decoded images waiting for the model.")
        self.info = Gauge("imgclass_model_info", "The served model (always 1).", ("method", "task"))

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests.inc(endpoint, method, str(status))
            self.latency.observe(seconds, endpoint)

    def batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.batch_size.observe(size)
            self.batch_latency.observe(seconds)

    def image(self, outcome: str) -> None:
        with self.lock:
            self.images.inc(outcome)

    def render(self) -> str:
        with self.lock:
            lines = []
            for m in (self.requests, self.latency, self.batch_size, self.batch_latency, self.images, self.queue,
                      self.info):
                lines += m.expose()
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
