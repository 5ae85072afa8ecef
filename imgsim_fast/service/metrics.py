"""Prometheus metrics of one service: requests by route and status, latency per route, the writer's queue
depth and batch sizes, embedding batches, and the number of files searchable. One registry per app, so
several apps in one process (tests) do not collide."""
from __future__ import annotations

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as e:  # the [service] extra; `imgsim serve` turns this into a one-line error
    raise ImportError("imgsim serve needs the [service] extra: pip install 'imgsim_fast[service]'") from e

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, queue_depth, index_size):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("imgsim_requests_total", "HTTP requests", ("method", "route", "status"), registry=r)
        self.latency = Histogram("imgsim_request_seconds", "Request latency", ("method", "route"), registry=r,
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batches = Histogram("imgsim_write_batch_jobs", "Jobs per committed write transaction", registry=r,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.embed_batches = Histogram("imgsim_embed_batch_images", "Images per embedding forward pass",
                                       registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        Gauge("imgsim_write_queue_depth", "Jobs waiting for the writer", registry=r).set_function(queue_depth)
        Gauge("imgsim_index_files", "Files searchable in the in-memory index", registry=r).set_function(index_size)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def batch(self, n: int) -> None:
        self.batches.observe(n)

    def embed_batch(self, n: int) -> None:
        self.embed_batches.observe(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
