"""``kitmw demo``: Go kit's addsvc (Sum, Concat) with every kitmw concern, narrated.

Two instances of a FastAPI service wrapped with ``kitmw.stack()`` run on loopback
(embedded defaults: memory rate-limit storage, process-local breaker, an in-memory OTel
exporter, Prometheus registries), and a client built on ``kitmw.httpx.AsyncTransport``
balances over them. The tour: normal calls with their request ids and one trace id
across client and server; a burst that meets 429s; a bad token that meets 401; one
instance stopped so the client's breaker opens and the balancer routes around it; a slow
route that meets its deadline (504) and its concurrency limit (503); the ``/metrics``
lines that changed; last, a plain function behind ``kitmw.endpoint`` (a call, a
refusal, its metrics). ``--serve`` keeps one instance up instead.
"""

import asyncio
import logging
import secrets
import socket
import sys
import time
from typing import Any

__all__ = ["build_service", "run_demo"]

MAX_INT = 2**31 - 1
MAX_CONCAT = 10


def _require_extras() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "httpx", "jwt", "opentelemetry.sdk"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(
            f"kitmw demo needs {', '.join(missing)}: python -m pip install -e '.[demo]' (or 'kitmw[demo]')"
        )


class Narrator:
    """Step headers and lines: rich on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.console: Any = None
        if sys.stdout.isatty():
            try:
                from rich.console import Console

                self.console = Console(highlight=False)
            except ImportError:
                pass
        self.step_no = 0
        self.t0 = time.monotonic()

    def step(self, title: str) -> None:
        self.step_no += 1
        text = f"[{time.monotonic() - self.t0:5.1f}s] Step {self.step_no}: {title}"
        if self.console is not None:
            self.console.rule(f"[bold cyan]{text}")
        else:
            print(f"\n== {text}", flush=True)

    def say(self, text: str, style: str = "") -> None:
        if self.console is not None:
            self.console.print(f"  {text}", style=style or None, markup=False)
        else:
            print(f"  {text}", flush=True)


class _Narrate(logging.Handler):
    """Shows kitmw's own log records (access log, client log, breaker) as narration."""

    def __init__(self, narrator: Narrator) -> None:
        super().__init__(logging.INFO)
        self.narrator = narrator
        self.enabled = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self.enabled:
            return
        get = record.__dict__.get
        if record.name == "kitmw.access":
            text = (
                f"server log: {get('method')} {get('path')} route={get('route')} status={get('status')} "
                f"request_id={_short(get('request_id'))} trace_id={_short(get('trace_id'))} "
                f"principal={get('principal') or '-'}"
            )
        elif record.name == "kitmw.endpoint":
            text = (
                f"endpoint log: {get('endpoint')} outcome={get('outcome')} error={get('error') or '-'} "
                f"request_id={_short(get('request_id'))}"
            )
        elif record.name == "kitmw.client":
            text = (
                f"client log: {get('method')} {get('url')} status={get('status')} attempts={get('attempts')} "
                f"request_id={_short(get('request_id'))}"
            )
        else:
            text = f"{record.name}: {record.getMessage()}"
        self.narrator.say(text, "dim" if record.levelno < logging.WARNING else "yellow")


def _short(value: Any) -> str:
    return "-" if not value else str(value)[:12] + "…"


class PortBusy(Exception):
    """A port asked for with ``--port`` cannot be bound on 127.0.0.1."""

    def __init__(self, port: int, reason: str) -> None:
        super().__init__(
            f"kitmw demo: cannot serve on 127.0.0.1:{port}: {reason}; "
            "choose another with --port, or leave --port out for a free port"
        )


def _listen(port: int) -> socket.socket:
    """A socket bound on 127.0.0.1 (``port`` 0: a free port), handed to uvicorn as is:
    the port is known before the server starts and no other process can take it between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise PortBusy(port, exc.strerror or str(exc)) from None
    return sock


def build_service(
    *,
    instance: str,
    secret: str,
    tracer_provider: Any,
    registry: Any,
    redis: str | None = None,
    cancelled: list[str] | None = None,
) -> Any:
    """addsvc as a FastAPI app, wrapped with every kitmw concern.

    Beside Sum and Concat, ``GET /report?seconds=`` stands for a slow dependency: it has a
    0.5 s deadline and at most 2 calls in flight; a call cancelled at its deadline is
    appended to ``cancelled``.
    """
    from fastapi import FastAPI, HTTPException, Request
    from pydantic import BaseModel

    import kitmw
    from kitmw.auth import JWT
    from kitmw.breaker import BreakerOptions
    from kitmw.ratelimit import RateLimitOptions

    class SumRequest(BaseModel):
        a: int
        b: int

    class ConcatRequest(BaseModel):
        a: str
        b: str

    api = FastAPI(title=f"addsvc ({instance})")

    @api.post("/sum")
    async def sum_(req: SumRequest, request: Request) -> dict[str, Any]:
        if (req.a > 0 and req.b > MAX_INT - req.a) or (req.a < 0 and req.b < -MAX_INT - req.a):
            raise HTTPException(status_code=400, detail="integer overflow")  # addsvc's ErrIntOverflow
        return {"v": req.a + req.b, "instance": instance, "caller": request.user.identity}

    @api.post("/concat")
    async def concat(req: ConcatRequest) -> dict[str, Any]:
        if len(req.a) + len(req.b) > MAX_CONCAT:
            raise HTTPException(status_code=400, detail="maximum size exceeded")  # ErrMaxSizeExceeded
        return {"v": req.a + req.b, "instance": instance}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "instance": instance}

    @api.get("/report")
    async def report(seconds: float = 0.1) -> dict[str, Any]:
        try:
            await asyncio.sleep(min(seconds, 30.0))  # a slow dependency
        except asyncio.CancelledError:
            if cancelled is not None:
                cancelled.append(f"/report?seconds={seconds:g}")
            raise
        return {"report": "ready", "instance": instance}

    limit: RateLimitOptions = {"limit": "10/second", "key": "principal"}
    breaker: BreakerOptions = {"fail_max": 5, "reset_timeout": 10, "name": f"addsvc-{instance}"}
    if redis:
        limit["storage"] = breaker["storage"] = redis
    return kitmw.stack(
        api,
        tracing={"tracer_provider": tracer_provider},
        access_log=True,
        metrics={"registry": registry},
        ratelimit=limit,
        auth=JWT(key=secret, algorithms=["HS256"]),
        breaker=breaker,
        timeout={"seconds": 5.0, "routes": {"/report": 0.5}},
        concurrency={"routes": {"/report": 2}},
        exclude_paths=["/health", "/metrics"],
    )


def _token(secret: str, subject: str) -> str:
    import jwt

    return jwt.encode({"sub": subject, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


class _Instance:
    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.port = port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or self.task.done():
                raise RuntimeError(f"instance on port {self.port} did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=10)


def _metric_lines(text: str) -> dict[str, str]:
    wanted = (
        "http_server_requests_total",
        "kitmw_ratelimit_decisions_total",
        "http_client_requests_total",
        "kitmw_breaker_state",
        "kitmw_breaker_transitions_total",
        "http_client_retries_total",
        "kitmw_timeouts_total",
        "kitmw_concurrency_rejections_total",
    )
    lines = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            lines[name] = value
    return lines


def _endpoint_step(narrator: Narrator) -> None:
    """A plain function behind ``kitmw.endpoint``: the same concerns around a call."""
    from prometheus_client import CollectorRegistry, generate_latest

    import kitmw

    narrator.step("a plain function behind kitmw.endpoint: the same concerns around a call")
    registry = CollectorRegistry()

    @kitmw.endpoint("quote", ratelimit="3/minute", metrics={"registry": registry}, access_log={"level": "INFO"})
    def quote(sku: str) -> int:
        """The price of ``sku`` in cents (business code, no kitmw inside)."""
        return 250 if sku.startswith("ab-") else 990

    narrator.say("@kitmw.endpoint('quote', ratelimit='3/minute', metrics=True, access_log=True) on def quote(sku)")
    for n, sku in enumerate(("ab-1", "cd-2", "ab-3", "ab-4"), 1):
        # As inside a request handler: the record of the call carries the request id.
        with kitmw.logging.bind_context(request_id=f"tour-{n + 10:04d}-{secrets.token_hex(4)}"):
            try:
                narrator.say(f"-> quote({sku!r}) = {quote(sku)}", "bold")
            except kitmw.RateLimited as exc:
                narrator.say(
                    f"-> quote({sku!r}) raised {type(exc).__name__} ({exc.rejection.code}): "
                    "the function was not called",
                    "yellow",
                )
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("kitmw_endpoint_calls_total{"):
            narrator.say(line)


async def _tour(narrator: Narrator, redis: str | None, port: int) -> int:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    import kitmw

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    secret = secrets.token_urlsafe(32)
    handler = _Narrate(narrator)
    for name in ("kitmw.access", "kitmw.client", "kitmw.breaker", "kitmw.endpoint"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    narrator.step("two instances of addsvc (Sum, Concat) behind kitmw.stack()")
    sockets = [_listen(port), _listen(port + 1 if port else 0)]
    registries = (REGISTRY, CollectorRegistry())
    cancelled: list[str] = []
    instances = [
        _Instance(
            build_service(
                instance=f"i{n + 1}",
                secret=secret,
                tracer_provider=provider,
                registry=registries[n],
                redis=redis,
                cancelled=cancelled,
            ),
            sockets[n],
        )
        for n in range(2)
    ]
    for inst in instances:
        await inst.start()
    token = _token(secret, "demo-user")
    narrator.say(f"instance i1 on {instances[0].url}, instance i2 on {instances[1].url}")
    narrator.say(
        "concerns: tracing, access log, metrics, rate limit (10/second per principal), JWT auth, breaker,"
        " timeout, concurrency limit"
    )
    narrator.say(f"demo JWT (HS256, secret generated for this run): {token[:40]}…")
    narrator.say(
        f"storage: {'Redis at ' + redis if redis else 'embedded (memory rate limits, process-local breakers)'}"
    )

    client_registry = CollectorRegistry()
    transport = kitmw.httpx.AsyncTransport(
        tracing={"tracer_provider": provider},
        access_log=True,
        metrics={"registry": client_registry},
        breaker={"fail_max": 2, "reset_timeout": 30},
        retry={"methods": ["GET", "POST"], "attempts": 3, "backoff_base": 0.05},
        instances=[inst.url for inst in instances],
    )
    before = _metric_lines(generate_latest(REGISTRY).decode())
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url=instances[0].url, headers=headers, timeout=5
    ) as client:
        narrator.step(
            "normal calls through the balancing client: one request id and one trace across client and server"
        )
        for i, (path, body) in enumerate(
            [
                ("/sum", {"a": 2, "b": 3}),
                ("/concat", {"a": "go", "b": "kit"}),
                ("/sum", {"a": 40, "b": 2}),
                ("/concat", {"a": "kit", "b": "mw"}),
            ]
        ):
            exporter.clear()
            # As inside a request handler: the client forwards the current request id.
            with kitmw.logging.bind_context(request_id=f"tour-{i + 1:04d}-{secrets.token_hex(4)}"):
                response = await client.post(path, json=body)
            data = response.json()
            narrator.say(
                f"-> {path} {body} = {data['v']!r} from instance {data['instance']} "
                f"(X-Request-ID {response.headers['x-request-id']})",
                "bold",
            )
            if i == 0:
                spans = exporter.get_finished_spans()
                kinds = {s.kind.name: s for s in spans}
                client_span, server_span = kinds.get("CLIENT"), kinds.get("SERVER")
                if client_span is not None and server_span is not None:
                    same = client_span.context.trace_id == server_span.context.trace_id
                    narrator.say(
                        f"one trace: client span '{client_span.name}' and server span '{server_span.name}' share "
                        f"trace id {server_span.context.trace_id:032x}: {'yes' if same else 'NO'}",
                        "green",
                    )
        response = await client.post("/sum", json={"a": MAX_INT, "b": 1})
        narrator.say(
            f"-> /sum overflow: {response.status_code} {response.json()} (a business error, "
            f"not retried, not a breaker failure)"
        )

        narrator.step("a burst from one caller meets the rate limit (429 with Retry-After)")
        handler.enabled = False
        burst_headers = {"Authorization": f"Bearer {_token(secret, 'bursty-user')}"}
        async with httpx.AsyncClient(base_url=instances[0].url, headers=burst_headers, timeout=5) as plain:
            answers = await asyncio.gather(*(plain.post("/sum", json={"a": 1, "b": i}) for i in range(20)))
        handler.enabled = True
        allowed = sum(1 for r in answers if r.status_code == 200)
        limited = [r for r in answers if r.status_code == 429]
        narrator.say(
            f"20 concurrent calls from 'bursty-user': {allowed} allowed, {len(limited)} answered 429"
        )
        if limited:
            r = limited[0]
            narrator.say(
                f"429 body {r.json()}  Retry-After: {r.headers.get('retry-after')}  "
                f"RateLimit: {r.headers.get('ratelimit')}  RateLimit-Policy: {r.headers.get('ratelimit-policy')}",
                "yellow",
            )
        narrator.say("'demo-user' has its own budget: the limit is keyed by the verified principal")

        narrator.step("a bad token meets 401")
        async with httpx.AsyncClient(base_url=instances[0].url, timeout=5) as plain:
            bad = await plain.post(
                "/sum", json={"a": 1, "b": 1}, headers={"Authorization": "Bearer not.a.jwt"}
            )
            forged = await plain.post(
                "/sum",
                json={"a": 1, "b": 1},
                headers={"Authorization": f"Bearer {_token('wrong-secret-' * 3, 'mallory')}"},
            )
        for label, r in (("garbage token", bad), ("token signed with another key", forged)):
            narrator.say(
                f"{label}: {r.status_code} {r.json()}  WWW-Authenticate: {r.headers.get('www-authenticate')}",
                "yellow",
            )

        narrator.step("instance i2 stops: the client's breaker opens and the balancer routes around it")
        await instances[1].stop()
        narrator.say(f"instance i2 ({instances[1].url}) stopped")
        served = []
        for i in range(8):
            response = await client.post("/sum", json={"a": i, "b": i})
            served.append(response.json()["instance"])
        narrator.say(f"8 calls after the stop, all answered, served by: {' '.join(served)}", "bold")
        narrator.say(
            "connection errors to i2 were retried on i1; after 2 failures i2's breaker is open "
            "and i2 is skipped without a connection attempt"
        )

    await _deadline_and_limit(narrator, handler, instances[0].url, _token(secret, "report-user"), cancelled)

    narrator.step("the /metrics lines that changed")
    handler.enabled = False
    async with httpx.AsyncClient(base_url=instances[0].url, timeout=5) as plain:
        exposition = (await plain.get("/metrics")).text
    handler.enabled = True
    after = _metric_lines(exposition)
    after.update(_metric_lines(generate_latest(client_registry).decode()))
    changed = [(k, before.get(k, "0.0"), v) for k, v in sorted(after.items()) if before.get(k) != v]
    narrator.say(f"instance i1's /metrics (and the client's registry): {len(changed)} series changed")
    for name, old, new in changed:
        narrator.say(f"{name} {old} -> {new}")
    await instances[0].stop()
    _endpoint_step(narrator)
    narrator.step("done")
    narrator.say("each concern above is one option of kitmw.stack(); see docs/ and `kitmw demo --serve`")
    return 0


async def _deadline_and_limit(
    narrator: Narrator, handler: _Narrate, url: str, token: str, cancelled: list[str]
) -> None:
    """The slow /report route: a call past its 0.5 s deadline (504, the handler cancelled),
    and a burst past its limit of 2 calls in flight (503)."""
    import httpx

    narrator.step("a slow route meets its deadline (504) and its concurrency limit (503)")
    narrator.say("/report has a 0.5 s deadline and at most 2 calls in flight (stack(timeout=..., concurrency=...))")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as plain:
        quick = await plain.get("/report", params={"seconds": 0.1})
        narrator.say(f"-> /report?seconds=0.1: {quick.status_code} {quick.json()}", "bold")
        late = await plain.get("/report", params={"seconds": 3})
        narrator.say(f"-> /report?seconds=3: {late.status_code} {late.json()} at its deadline", "yellow")
        if cancelled:
            narrator.say(f"the handler of {cancelled[-1]} was cancelled at the deadline, not left running")
        handler.enabled = False
        burst = await asyncio.gather(*(plain.get("/report", params={"seconds": 0.4}) for _ in range(6)))
        handler.enabled = True
    served = sum(1 for r in burst if r.status_code == 200)
    refused = [r for r in burst if r.status_code == 503]
    narrator.say(f"6 concurrent calls: {served} answered 200, {len(refused)} answered 503")
    if refused:
        r = refused[0]
        narrator.say(f"503 body {r.json()}  Retry-After: {r.headers.get('retry-after')}", "yellow")


async def _serve(narrator: Narrator, redis: str | None, port: int) -> int:
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import REGISTRY

    import kitmw

    provider = TracerProvider()  # trace ids in every log line; add an OTLP exporter in production
    secret = secrets.token_urlsafe(32)
    sock = _listen(port)  # before logging is configured: a busy port is one line, no traceback
    kitmw.logging.configure(format="logfmt")
    instance = _Instance(
        build_service(instance="i1", secret=secret, tracer_provider=provider, registry=REGISTRY, redis=redis),
        sock,
    )
    await instance.start()
    token = _token(secret, "demo-user")
    narrator.step(f"addsvc is serving on {instance.url} (Ctrl-C to stop)")
    narrator.say(f"TOKEN={token}")
    narrator.say(
        f'curl -s {instance.url}/sum -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d \'{{"a": 2, "b": 3}}\''
    )
    narrator.say(
        f'curl -s {instance.url}/concat -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d \'{{"a": "go", "b": "kit"}}\''
    )
    narrator.say(
        f'curl -s {instance.url}/sum -H "Content-Type: application/json" -d \'{{"a": 1, "b": 1}}\'    # 401'
    )
    narrator.say(f"curl -s {instance.url}/metrics")
    try:
        assert instance.task is not None
        await instance.task
    except asyncio.CancelledError:
        pass
    return 0


def run_demo(*, serve: bool = False, redis: str | None = None, port: int = 0) -> int:
    """Run the tour (or ``serve``); returns the process exit status."""
    _require_extras()
    narrator = Narrator()
    try:
        return asyncio.run(_serve(narrator, redis, port) if serve else _tour(narrator, redis, port))
    except KeyboardInterrupt:
        return 0
    except PortBusy as exc:
        print(exc, file=sys.stderr)
        return 1
