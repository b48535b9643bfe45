"""kitmw on outgoing httpx calls: log, metrics, tracing, breaker, rate limit, retry, balancing.

Run it: ``python examples/httpx_client.py``. It needs no server: the two "instances"
of the upstream service are an ``httpx.MockTransport`` (the way to test your own code
that uses these transports), one of them down. Swap ``transport=`` out (or drop it:
the default is ``httpx.HTTPTransport()``) to talk to real services.
"""

from __future__ import annotations

import logging

import httpx
from prometheus_client import CollectorRegistry, generate_latest

import kitmw.httpx
import kitmw.logging

INSTANCES = ["http://orders-1.internal:8000", "http://orders-2.internal:8000"]


def upstream(request: httpx.Request) -> httpx.Response:
    """orders-2 is down (connection refused); orders-1 answers."""
    if request.url.host == "orders-2.internal":
        raise httpx.ConnectError("connection refused", request=request)
    return httpx.Response(200, json={"order": request.url.path.rsplit("/", 1)[-1], "by": request.url.host})


def main() -> None:
    kitmw.logging.configure(format="logfmt")  # one line per call on the "kitmw.client" logger
    registry = CollectorRegistry()
    transport = kitmw.httpx.Transport(
        transport=httpx.MockTransport(upstream),  # default: httpx.HTTPTransport()
        access_log=True,
        metrics={"registry": registry},
        tracing=True,  # a CLIENT span per call, traceparent injected (global TracerProvider)
        breaker={"fail_max": 2, "reset_timeout": 30},  # one breaker per instance
        ratelimit={"limit": "100/second", "mode": "delay", "max_wait": 2},
        retry={"attempts": 3, "backoff_base": 0.05, "deadline": 5},  # idempotent methods only
        instances=INSTANCES,  # calls to either origin are balanced over both
    )
    client = httpx.Client(transport=transport, base_url=INSTANCES[0], timeout=5)
    with client, kitmw.logging.bind_context(request_id="example-1"):  # forwarded as X-Request-ID
        for n in range(6):
            print(client.get(f"/orders/{n}").json())
    # orders-2 was tried twice, its breaker opened, and the balancer skips it since.
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("http_client_requests_total", "http_client_retries_total")):
            print(line)


if __name__ == "__main__":
    logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx's own per-request line
    main()
