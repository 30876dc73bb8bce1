"""The service's Prometheus metrics: requests by route and status, latency, answers served (and,
when asked for, the version each environment was answered from)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond answers are the point: buckets start at 0.1 ms.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2)


class ServiceMetrics:
    """``per_environment``: the served version and answers per environment, labelled with its
    key. Off by default: ``/metrics`` needs no API key, so by default it names no tenant (and
    its series do not grow with the number of environments)."""

    def __init__(self, registry: CollectorRegistry, per_environment: bool = False) -> None:
        self.per_environment = per_environment
        self.requests = Counter(
            "membership_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "membership_http_request_seconds",
            "Time to answer, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.version = (
            Gauge(
                "membership_served_version",
                "The version id each environment was last answered from",
                ["environment"],
                registry=registry,
            )
            if per_environment
            else None
        )
        self.identifier_lookups = Counter(
            "membership_identifier_lookups",
            "Identifiers resolved to identity ids: remembered, or queried in Flagsmith's database",
            ["how"],
            registry=registry,
        )
        self.answers = Counter(
            "membership_answers",
            "Answers served from a published version"
            + (", by environment" if per_environment else ""),
            ["environment"] if per_environment else [],
            registry=registry,
        )

    def identifier_resolved(self, how: str, count: int = 1) -> None:
        if count:
            self.identifier_lookups.labels(how).inc(count)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def served(self, environment_key: str, version_id: int) -> None:
        if self.version is None:
            self.answers.inc()
            return
        self.version.labels(environment_key).set(version_id)
        self.answers.labels(environment_key).inc()
