"""Prometheus metrics of the API process: requests by route and status, and how long they took.

Routes are labelled by their stable name (``alerts.list``), never by path, so ids in URLs do not
become series. Refused callers show as status 401 (no or bad token) and 403 (role not allowed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

Handler = Callable[[Request], Awaitable[Response]]

#: Request seconds buckets: API answers are milliseconds; a slow database shows in the upper ones.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    """The API process's registry (its own: tests run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "coldtrace_api_requests", "Requests answered, by route name, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.seconds = Histogram(
            "coldtrace_api_request_seconds", "Time to answer a request, by route name", ["route"],
            buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    async def middleware(self, request: Request, call_next: Handler) -> Response:
        """Count and time every request (an HTTP middleware for the app)."""
        started = time.perf_counter()
        status = 500  # what the server answers if the handler raises past the exception handlers
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            name = route.name if isinstance(route, APIRoute) else "unmatched"
            self.requests.labels(name, request.method, str(status)).inc()
            self.seconds.labels(name).observe(time.perf_counter() - started)
