"""Prometheus metrics of one service instance (its own registry, so several apps can coexist in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "charrnn_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "charrnn_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.generated_chars = Counter(
            "charrnn_generated_chars", "Characters generated (one per sequence per decoding step)", registry=r
        )
        self.completions = Counter(
            "charrnn_completions", "Completion requests finished, by outcome", ["outcome"], registry=r
        )
        self.batch_size = Gauge("charrnn_batch_size", "Sequences in the running decode batch", registry=r)
        self.queue_depth = Gauge("charrnn_queue_depth", "Completion requests waiting to join the batch", registry=r)
        self.decode_steps = Counter("charrnn_decode_steps", "Batched decoding steps run", registry=r)
        self.training_jobs = Counter(
            "charrnn_training_jobs", "Training jobs finished, by status", ["status"], registry=r
        )
        self.training_progress = Gauge(
            "charrnn_training_progress", "Share of the running training job's steps done (0-1)", registry=r
        )
        self.model_loads = Counter(
            "charrnn_model_loads",
            "Requests naming a stored model other than the active one: kept loaded (hit) or loaded (load)",
            ["outcome"],
            registry=r,
        )
        # the prefix cache's counters live in the cache (read when scraped)
        self.prefix_cache_hits = Gauge(
            "charrnn_prefix_cache_hits", "Long prefixes resumed from a kept state (since start)", registry=r
        )
        self.prefix_cache_misses = Gauge(
            "charrnn_prefix_cache_misses", "Long prefixes with no kept state to resume from (since start)", registry=r
        )
        self.prefix_cache_bytes = Gauge(
            "charrnn_prefix_cache_bytes", "Bytes the prefix cache holds (states and their prefixes)", registry=r
        )
        self.active_model = Info("charrnn_active_model", "The model serving completions", registry=r)
