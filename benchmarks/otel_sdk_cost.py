"""``python -m benchmarks.otel_sdk_cost``: a minimal reproduction, for an upstream report,
of where the OpenTelemetry SDK spends a server span's time.

Only ``opentelemetry-sdk`` is used (no kitmw): a ``TracerProvider`` whose one span
processor does nothing on end, and the 14 attributes an HTTP server span of the old
semantic conventions carries. Each step is timed on its own (median of interleaved
rounds, µs per call, garbage collector off):

* a span started and ended with no attribute;
* the same with the 11 attributes known at the start (each goes through
  ``BoundedAttributes`` -> ``_clean_attribute_value``: type checks per value, a lock);
* the same with all 14 at the start;
* what a middleware must add: the span made current (``set_span_in_context`` +
  ``context.attach``/``detach``), the 3 attributes known at the end set then, the name
  completed with the route.

The difference between the first two lines is the per-attribute cost upstream could
cut (validation of values that are already ``str``/``int``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind

EARLY: dict[str, Any] = {
    "http.scheme": "http",
    "http.host": "127.0.0.1:8000",
    "net.host.port": 8000,
    "http.flavor": "1.1",
    "http.server_name": "bench.local",
    "http.user_agent": "kitmw-bench/1.0",
    "http.target": "/items/42",
    "http.url": "http://bench.local/items/42",
    "http.method": "GET",
    "net.peer.ip": "127.0.0.1",
    "net.peer.port": 50000,
}
LATE: dict[str, Any] = {"http.route": "/items/{item_id}", "http.status_code": 200, "http.response_content_length": 2}


class Nothing(SpanProcessor):
    def on_end(self, span: Any) -> None:
        return None


def steps() -> dict[str, Callable[[], None]]:
    provider = TracerProvider()
    provider.add_span_processor(Nothing())
    tracer = provider.get_tracer("repro")
    full = {**EARLY, **LATE}

    def bare() -> None:
        tracer.start_span("GET", kind=SpanKind.SERVER).end()

    def early() -> None:
        tracer.start_span("GET", kind=SpanKind.SERVER, attributes=EARLY).end()

    def all14() -> None:
        tracer.start_span("GET /items/{item_id}", kind=SpanKind.SERVER, attributes=full).end()

    def middleware() -> None:
        span = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=EARLY)
        token = context.attach(trace.set_span_in_context(span))
        span.get_span_context()
        span.update_name("GET /items/{item_id}")
        span.set_attributes(LATE)
        span.end()
        context.detach(token)

    return {
        "span, no attribute": bare,
        "span, 11 attributes at start": early,
        "span, 14 attributes at start": all14,
        "span as a middleware drives it (11 + 3 late, current, renamed)": middleware,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    cases = steps()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for call in cases.values():
        call()
    for _ in range(args.rounds):
        for name, call in cases.items():
            gc.disable()
            start = time.thread_time_ns()
            for _ in range(args.calls):
                call()
            times[name].append((time.thread_time_ns() - start) / args.calls / 1000)
            gc.enable()
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name, value in medians.items():
        print(f"{name:<66} {value:6.2f} µs")
    per_attribute = (medians["span, 11 attributes at start"] - medians["span, no attribute"]) / len(EARLY)
    print(f"\nper attribute at start: {per_attribute:.2f} µs")


if __name__ == "__main__":
    main()
