"""The server's Prometheus metrics through ``prometheus_client``, with labels from fixed sets only.

Every label value comes from a closed list (known paths, standard methods, status codes the server
sends, error codes it names), so no client can grow ``/metrics`` by inventing methods or paths.
When ``PROMETHEUS_MULTIPROC_DIR`` is set (``imgclass serve --workers N`` sets it), every worker
writes its numbers there and a scrape of any worker reports them all.
"""

from __future__ import annotations

import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# the *_created series double the page and say nothing a scraper needs
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

#: paths reported under their own name (anything else is "other")
KNOWN_PATHS = frozenset({"/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch",
                         "/v1/explain", "/docs", "/openapi.json", "/static/app.js", "/static/style.css"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


def endpoint_label(path: str) -> str:
    """The path itself when it is one of the server's, else ``other``."""
    if path.startswith("/static/swagger-ui/"):
        return "/static/swagger-ui"
    return path if path in KNOWN_PATHS else "other"


def method_label(method: str) -> str:
    """The method when it is a standard one, else ``other``."""
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    """The status code as text; anything outside 100-599 is ``other``."""
    return str(status) if 100 <= int(status) <= 599 else "other"


def multiprocess_dir() -> str | None:
    """The shared folder of multiprocess mode, when it is on."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class ServerMetrics:
    """Everything ``GET /metrics`` reports, in a registry of this app's own (tests build many apps)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("imgclass_requests", "HTTP requests by endpoint, method and status code.",
                                ("endpoint", "method", "status"), registry=r)
        self.latency = Histogram("imgclass_request_duration_seconds", "HTTP request latency by endpoint.",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("imgclass_batch_size", "Images per model call (micro-batch size).",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("imgclass_batch_duration_seconds", "Time of one model call on a micro-batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("imgclass_images", "Images received, by outcome (ok or the error code).",
                              ("outcome",), registry=r)
        self.shed = Counter("imgclass_shed_requests", "Requests answered 503 to stay within a budget, by budget.",
                            ("budget",), registry=r)
        self.queue = Gauge("imgclass_queue_depth", "Decoded images waiting for the model.", registry=r,
                           multiprocess_mode="livesum")
        self.decode_bytes = Gauge("imgclass_decode_memory_bytes", "Decoded-image memory reserved right now.",
                                  registry=r, multiprocess_mode="livesum")
        self.info = Gauge("imgclass_model_info", "The served model (always 1).", ("method", "task"), registry=r,
                          multiprocess_mode="max")

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        endpoint = endpoint_label(path)
        self.requests.labels(endpoint, method_label(method), status_label(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def image(self, outcome: str) -> None:
        self.images.labels(outcome).inc()

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's files in multiprocess mode."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)

    def close(self) -> None:
        """Drop this process's live gauges from the shared folder (multiprocess mode) as it exits."""
        if multiprocess_dir() is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
