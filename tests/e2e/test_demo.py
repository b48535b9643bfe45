"""The README's first command: `kitmw demo` runs the tour and exits by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_tour_shows_every_concern() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "kitmw", "demo"], capture_output=True, text=True, timeout=90, env=env
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    # normal calls: the request id bound by the caller reaches the server, one trace id on both sides
    assert re.search(r"X-Request-ID tour-0001-", out)
    assert "share trace id" in out and ": yes" in out
    # the burst meets 429 with Retry-After and the IETF headers
    assert re.search(r"\d+ allowed, [1-9]\d* answered 429", out)
    assert "Retry-After: 1" in out and "RateLimit-Policy:" in out
    # the bad token meets 401 with a challenge
    assert "401 {'error': 'unauthorized'}" in out and 'WWW-Authenticate: Bearer realm="kitmw"' in out
    # the stopped instance: its breaker opens and every call is still answered by i1
    assert re.search(r"client:http://127\.0\.0\.1:\d+: closed -> open", out)
    assert "served by: i1 i1 i1 i1 i1 i1 i1 i1" in out
    # the slow route: 504 at its deadline (the handler cancelled), 503 past its concurrency limit
    assert "-> /report?seconds=3: 504 {'error': 'timeout'} at its deadline" in out
    assert "the handler of /report?seconds=3 was cancelled at the deadline" in out
    assert "6 concurrent calls: 2 answered 200, 4 answered 503" in out
    assert "503 body {'error': 'concurrency_limited'}  Retry-After: 1" in out
    # the metrics lines that changed
    assert re.search(
        r'http_server_requests_total\{method="POST",route="/sum",status="429"\} 0\.0 -> [1-9]', out
    )
    assert re.search(r'kitmw_breaker_state\{breaker="client:[^"]+",state="open"\} 0\.0 -> 1\.0', out)
    assert 'kitmw_timeouts_total{scope="/report",side="server"} 0.0 -> 1.0' in out
