"""Request ids, a structured access log, and Prometheus metrics.

A pure ASGI middleware, so streamed bodies pass through untouched and the log line is written
when the last byte has gone out (its latency is the whole answer's).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ki2api.model.context import RequestContext, current_request
from ki2api.model.ids import hex_id
from ki2api.model.logsafe import printable

access_log = logging.getLogger("ki2api.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_API_PREFIXES = ("/v1/", "/admin/", "/health", "/metrics")
OTHER = "other"  # the one label of every path that is not one of the API's routes
# The playground's chats have no HTTP route (the page calls the gateway in-process); their
# metrics label and access-log path.
PLAYGROUND_PATH = "/playground/chat"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ki2api_requests", "HTTP requests to the API", ["path", "status"], registry=r
        )
        self.errors = Counter("ki2api_errors", "Errors returned, by code", ["code"], registry=r)
        self.latency = Histogram(
            "ki2api_request_seconds",
            "Whole-answer latency",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ki2api_time_to_first_token_seconds",
            "Time to the first content delta",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CallbackCollector(Collector):
    """Gauges read at scrape time (account states, refresh counts) from a callable."""

    def __init__(self, name: str, doc: str, label: str, read: Callable[[], dict[str, float]]):
        self._name, self._doc, self._label, self._read = name, doc, label, read

    def collect(self) -> Any:
        family = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
        try:
            values = self._read()
        except Exception:  # a scrape must never fail because of a half-started app
            values = {}
        for key, value in values.items():
            family.add_metric([key], value)
        yield family


class KeyUsageCollector(Collector):
    """Usage by client key since start (``ki2api.teams``): counters labelled with the key's
    name, a bounded set (the operator's ``operator``; past a hundred keys, ``other``)."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Any:
        families = {
            field: CounterMetricFamily(f"ki2api_key_{name}", doc, labels=["key"])
            for field, name, doc in _KEY_COUNTERS
        }
        tokens = CounterMetricFamily(
            "ki2api_key_tokens", "Tokens by client key", labels=["key", "kind"]
        )
        try:
            totals = dict(self._read())
        except Exception:  # a scrape must never fail because of a half-started app
            totals = {}
        for key, row in sorted(totals.items()):
            for field, family in families.items():
                family.add_metric([key], float(getattr(row, field)))
            tokens.add_metric([key, "input"], float(row.input_tokens))
            tokens.add_metric([key, "output"], float(row.output_tokens))
        yield from families.values()
        yield tokens


_KEY_COUNTERS = (
    ("requests", "requests", "Requests admitted, by client key"),
    ("errors", "errors", "Admitted requests that failed, by client key"),
    ("refused", "refused", "Requests refused by the key's own limits, by client key"),
    ("credits", "credits", "Kiro credits (metered, or estimated where Kiro sent none), by key"),
)


def _route_label(scope: Scope, lane: frozenset[str]) -> str:
    """The route's template (``/admin/accounts/{label}``), never the raw path: made-up paths
    all share :data:`OTHER`, so the label's values (and ``/metrics``) stay a fixed few."""
    path: str = scope.get("path", "")
    if path in lane:
        return path  # the chat routes' own lane: exact paths, no router involved
    route = scope.get("route")  # set by the router on the scope it was handed
    template = getattr(route, "path", None)
    if isinstance(route, Mount) or not isinstance(template, str) or not template:
        return OTHER  # no route, or the UI's mount (which takes every path left)
    return template


class ObservabilityMiddleware:
    """``lane``: the paths that reach their endpoint without the router (``Ki2API.lane``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, lane: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else None
        ctx = RequestContext(request_id or f"req_{hex_id()}")
        token = current_request.set(ctx)
        started = time.perf_counter()
        status = 500
        rid_header = (b"x-request-id", ctx.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new message: the app's may be a shared constant (mutating it would pile
                # every request's id onto every later answer).
                headers = [*message.get("headers", ()), rid_header]
                if ctx.kiro_model is not None:  # which Kiro model served the answer
                    headers.append((b"x-ki2api-model", ctx.kiro_model.encode("latin-1", "replace")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request.reset(token)
            self._record(scope, ctx, status, time.perf_counter() - started)

    def _record(self, scope: Scope, ctx: RequestContext, status: int, elapsed: float) -> None:
        path = scope.get("path", "")
        if not path.startswith(_API_PREFIXES):
            return  # the page and its assets
        label = _route_label(scope, self.lane)
        record(self.metrics, scope.get("method"), path, label, ctx, status, elapsed)


def record(
    metrics: Metrics,
    method: object,
    path: str,
    label: str,
    ctx: RequestContext,
    status: int,
    elapsed: float,
) -> None:
    """Count one finished request in the metrics and its key's usage, and, for the API's chats
    (``/v1/...``, and the page's, :data:`PLAYGROUND_PATH`), write its access-log line."""
    ctx.settle(status)
    m = metrics
    m.requests.labels(label, str(status)).inc()
    m.latency.labels(label).observe(elapsed)
    if ctx.ttft is not None:
        m.ttft.observe(ctx.ttft)
    if ctx.error:
        m.errors.labels(ctx.error).inc()
    if path.startswith("/v1/") or path == PLAYGROUND_PATH:
        # Everything a client chose is escaped: one request, one line, these fields.
        access_log.info(
            "method=%s path=%s status=%d model=%s kiro_model=%s account=%s key=%s "
            "latency_ms=%.1f ttft_ms=%s error=%s request_id=%s",
            printable(method),
            printable(path),
            status,
            printable(ctx.model or "-"),
            printable(ctx.kiro_model or "-"),
            printable(ctx.account or "-"),
            "-" if ctx.caller is None else printable(ctx.caller.name),
            elapsed * 1000,
            "-" if ctx.ttft is None else f"{ctx.ttft * 1000:.1f}",
            ctx.error or "-",
            ctx.request_id,
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None
