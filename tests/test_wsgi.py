"""The WSGI driver: wrapped start_response, closing iterable, context, errors, routes."""

from __future__ import annotations

import contextvars
import io
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import create_environ

import kitmw
from kitmw.errors import Rejection
from kitmw.exchange import Exchange, Policy
from kitmw.wsgi import Middleware, WsgiExchange

request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_request_var", default=None)


class Recorder(Policy):
    """Logs enter/exit, adds a header, may reject."""

    name = "recorder"

    def __init__(self, label: str, log: list[str], *, reject: Rejection | None = None) -> None:
        self.label = label
        self.log = log
        self.reject = reject

    def enter(self, ex: Exchange) -> Rejection | None:
        self.log.append(f"enter {self.label}")
        ex.add_response_header(f"x-{self.label}", "1")
        return self.reject

    def exit(self, ex: Exchange) -> None:
        err = type(ex.error).__name__ if ex.error else None
        self.log.append(f"exit {self.label} {ex.status} {ex.bytes_out} {err}")


class ContextPolicy(Policy):
    """Sets a contextvar in enter and resets it in exit, as the access log does."""

    name = "context"

    def enter(self, ex: Exchange) -> Rejection | None:
        ex.state["token"] = request_var.set(ex.header("x-request-id") or "none")
        return None

    def exit(self, ex: Exchange) -> None:
        request_var.reset(ex.state.pop("token"))


class Keep(Policy):
    """Keeps the exchange for inspection."""

    name = "keep"

    def __init__(self, counts_request_bytes: bool = False) -> None:
        self.seen: list[Exchange] = []
        self.counts_request_bytes = counts_request_bytes  # type: ignore[misc]

    def enter(self, ex: Exchange) -> Rejection | None:
        self.seen.append(ex)
        return None

    def exit(self, ex: Exchange) -> None:
        ex.state["exited"] = ex.state.get("exited", 0) + 1


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello", b" world"]


def boom(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("boom")


class StartResponse:
    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None
        self.written: list[bytes] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.written.append

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def client(app: Any, **kw: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=app, **kw), base_url="http://test")


# -- order, rejections, headers -------------------------------------------------------


def test_policies_enter_in_order_and_exit_in_reverse() -> None:
    log: list[str] = []
    app = Middleware(hello, Recorder("a", log), Recorder("b", log))
    with client(app) as c:
        r = c.get("/x")
    assert r.text == "hello world"
    assert r.headers["x-a"] == "1" and r.headers["x-b"] == "1"
    assert log == ["enter a", "enter b", "exit b 200 11 None", "exit a 200 11 None"]


def test_rejection_stops_inner_policies_and_app() -> None:
    log: list[str] = []
    called = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(1)
        return hello(environ, start_response)

    deny = Rejection(429, headers=(("Retry-After", "3"),))
    mw = Middleware(app, Recorder("a", log), Recorder("b", log, reject=deny), Recorder("c", log))
    sr = StartResponse()
    body = mw(create_environ("/"), sr)
    chunks = list(body)
    body.close()  # type: ignore[attr-defined]
    assert sr.status == "429 Too Many Requests"
    assert b"".join(chunks) == b'{"error":"rate_limited"}'
    assert sr.header("retry-after") == "3" and sr.header("x-a") == "1"
    assert sr.header("content-type") == "application/json"
    assert not called
    assert log == ["enter a", "enter b", "exit b 429 24 None", "exit a 429 24 None"]


def test_exchange_finishes_when_the_body_is_exhausted_not_before() -> None:
    log: list[str] = []
    body = iter(Middleware(hello, Recorder("a", log))(create_environ("/"), StartResponse()))
    assert next(body) == b"hello" and next(body) == b" world"
    assert log == ["enter a"]  # the last chunk is out, but the server may still ask for more
    with pytest.raises(StopIteration):
        next(body)
    assert log == ["enter a", "exit a 200 11 None"]
    body.close()  # type: ignore[attr-defined]
    assert log == ["enter a", "exit a 200 11 None"]


def test_abandoned_body_finishes_in_close() -> None:
    log: list[str] = []
    body = iter(Middleware(hello, Recorder("a", log))(create_environ("/"), StartResponse()))
    assert next(body) == b"hello"
    body.close()  # type: ignore[attr-defined]  # the client went away
    assert log == ["enter a", "exit a 200 5 None"]


def test_close_twice_finishes_once_and_forwards_inner_close_once() -> None:
    closed = []

    class Inner:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(1)

    def app(environ: dict[str, Any], start_response: Any) -> Inner:
        start_response("200 OK", [])
        return Inner()

    keep = Keep()
    body = Middleware(app, keep)(create_environ("/"), StartResponse())
    list(body)
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert closed == [1]
    assert keep.seen[0].state["exited"] == 1


def test_close_without_iterating_finishes_with_zero_bytes() -> None:
    log: list[str] = []
    body = Middleware(hello, Recorder("a", log))(create_environ("/"), StartResponse())
    body.close()  # type: ignore[attr-defined]
    assert log == ["enter a", "exit a 200 0 None"]


def test_end_time_is_taken_at_the_last_chunk() -> None:
    keep = Keep()
    body = Middleware(hello, keep)(create_environ("/"), StartResponse())
    list(body)
    ex = keep.seen[0]
    end = ex.end_ns
    assert end > ex.start_ns
    body.close()  # type: ignore[attr-defined]
    assert ex.end_ns == end


def test_write_callable_bytes_are_counted() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"abc")
        write(b"de")
        return [b"f"]

    log: list[str] = []
    sr = StartResponse()
    body = Middleware(app, Recorder("a", log))(create_environ("/"), sr)
    assert list(body) == [b"f"]
    body.close()  # type: ignore[attr-defined]
    assert sr.written == [b"abc", b"de"]
    assert log[-1] == "exit a 200 6 None"


def test_start_response_called_inside_the_generator() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("201 Created", [])
        yield b"made"

    log: list[str] = []
    with client(Middleware(app, Recorder("a", log))) as c:
        r = c.post("/")
    assert r.status_code == 201 and r.headers["x-a"] == "1"
    assert log[-1] == "exit a 201 4 None"


def test_exc_info_replaces_the_response_and_keeps_added_headers() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        try:
            raise KeyError("x")
        except KeyError:
            import sys

            start_response("503 Service Unavailable", [], sys.exc_info())
        return [b"down"]

    log: list[str] = []
    with client(Middleware(app, Recorder("a", log)), raise_app_exceptions=False) as c:
        r = c.get("/")
    assert r.status_code == 503 and r.headers["x-a"] == "1"
    assert log[-1] == "exit a 503 4 None"


# -- errors ---------------------------------------------------------------------------


def test_app_exception_is_recorded_and_reraised_unchanged() -> None:
    log: list[str] = []
    error = RuntimeError("boom")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with client(Middleware(app, Recorder("a", log))) as c, pytest.raises(RuntimeError) as info:
        c.get("/")
    assert info.value is error
    assert log == ["enter a", "exit a 500 0 RuntimeError"]


def test_app_exception_is_rendered_by_the_server_by_default(serve_wsgi: Any) -> None:
    log: list[str] = []
    with serve_wsgi(Middleware(boom, Recorder("a", log))) as server:
        r = httpx.get(server.url + "/", timeout=10)
    assert r.status_code == 500
    assert log == ["enter a", "exit a 500 0 RuntimeError"]


def test_handle_errors_answers_json_500_with_added_headers() -> None:
    log: list[str] = []
    with client(Middleware(boom, Recorder("a", log), handle_errors=True), raise_app_exceptions=False) as c:
        r = c.get("/")
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error"}
    assert r.headers["x-a"] == "1"
    assert log[-1] == "exit a 500 26 RuntimeError"


def test_handle_errors_still_hands_the_exception_to_the_server() -> None:
    sr = StartResponse()
    body = Middleware(boom, handle_errors=True)(create_environ("/"), sr)
    assert sr.status == "500 Internal Server Error"
    assert isinstance(sr.exc_info[1], RuntimeError)
    body.close()  # type: ignore[attr-defined]


def test_exception_during_iteration_before_any_byte_is_a_500() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        raise ValueError("late")
        yield b""  # pragma: no cover

    log: list[str] = []
    body = Middleware(app, Recorder("a", log))(create_environ("/"), StartResponse())
    with pytest.raises(ValueError, match="late"):
        list(body)
    body.close()  # type: ignore[attr-defined]
    assert log[-1] == "exit a 500 0 ValueError"


def test_exception_after_bytes_were_sent_keeps_the_status() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"part"
        raise ValueError("mid-stream")

    log: list[str] = []
    body = Middleware(app, Recorder("a", log))(create_environ("/"), StartResponse())
    chunks = []
    with pytest.raises(ValueError, match="mid-stream"):
        for chunk in body:
            chunks.append(chunk)
    body.close()  # type: ignore[attr-defined]
    assert chunks == [b"part"]
    assert log[-1] == "exit a 200 4 ValueError"


def test_exception_in_enter_runs_exits_and_is_reraised() -> None:
    class Broken(Policy):
        def enter(self, ex: Exchange) -> Rejection | None:
            raise LookupError("policy bug")

    log: list[str] = []
    with pytest.raises(LookupError):
        Middleware(hello, Recorder("a", log), Broken())(create_environ("/"), StartResponse())
    assert log == ["enter a", "exit a 500 0 LookupError"]


def test_every_exit_runs_even_if_one_raises() -> None:
    class BadExit(Policy):
        def exit(self, ex: Exchange) -> None:
            raise LookupError("exit bug")

    log: list[str] = []
    body = Middleware(hello, Recorder("a", log), BadExit())(create_environ("/"), StartResponse())
    with pytest.raises(LookupError):
        list(body)
    assert log[-1] == "exit a 200 11 None"


# -- request context ------------------------------------------------------------------


def test_context_is_bound_in_app_and_body_and_reset_in_close() -> None:
    seen: list[tuple[str, str | None]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        seen.append(("call", request_var.get()))
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            seen.append(("chunk", request_var.get()))
            yield b"a"
            seen.append(("chunk", request_var.get()))
            yield b"b"

        return body()

    class Closing:
        def __init__(self, inner: Iterator[bytes]) -> None:
            self.inner = inner

        def __iter__(self) -> Iterator[bytes]:
            return self.inner

        def close(self) -> None:
            seen.append(("close", request_var.get()))

    def outer(environ: dict[str, Any], start_response: Any) -> Closing:
        return Closing(app(environ, start_response))

    body = Middleware(outer, ContextPolicy())(
        create_environ("/", headers={"X-Request-ID": "r1"}), StartResponse()
    )
    assert request_var.get() is None  # never leaks into the server's context
    assert list(body) == [b"a", b"b"]
    body.close()  # type: ignore[attr-defined]
    assert seen == [("call", "r1"), ("chunk", "r1"), ("chunk", "r1"), ("close", "r1")]
    assert request_var.get() is None


def test_context_does_not_leak_when_close_is_never_called() -> None:
    body = Middleware(hello, ContextPolicy())(
        create_environ("/", headers={"X-Request-ID": "r2"}), StartResponse()
    )
    list(body)
    assert request_var.get() is None


def test_body_iterated_from_another_thread_sees_the_request_context() -> None:
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        seen.append(request_var.get())
        yield b"x"

    body = Middleware(app, ContextPolicy())(
        create_environ("/", headers={"X-Request-ID": "r3"}), StartResponse()
    )
    worker = threading.Thread(target=lambda: (list(body), body.close()))  # type: ignore[attr-defined]
    worker.start()
    worker.join(timeout=10)
    assert seen == ["r3"]


def test_threaded_server_keeps_each_request_context_apart(serve_wsgi: Any) -> None:
    """Two requests overlap on two server threads; each body sees its own request id."""
    both_inside = threading.Barrier(2, timeout=10)

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        both_inside.wait()  # both requests are now in flight, in their own threads
        yield (request_var.get() or "").encode()
        yield b"|" + (request_var.get() or "").encode()

    with serve_wsgi(Middleware(app, ContextPolicy())) as server:
        results: dict[str, str] = {}

        def get(rid: str) -> None:
            results[rid] = httpx.get(server.url + "/", headers={"X-Request-ID": rid}, timeout=10).text

        threads = [threading.Thread(target=get, args=(rid,)) for rid in ("one", "two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
    assert results == {"one": "one|one", "two": "two|two"}


# -- request body ---------------------------------------------------------------------


def test_request_bytes_are_counted_as_the_app_reads_them() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        first = stream.read(3)
        rest = stream.read()
        start_response("200 OK", [])
        return [first, rest]

    keep = Keep(counts_request_bytes=True)
    with client(Middleware(app, keep)) as c:
        r = c.post("/", content=b"0123456789")
    assert r.content == b"0123456789"
    assert keep.seen[0].bytes_in == 10


def test_unread_request_body_counts_nothing() -> None:
    keep = Keep(counts_request_bytes=True)
    with client(Middleware(hello, keep)) as c:
        c.post("/", content=b"x" * 100)
    assert keep.seen[0].bytes_in == 0


def test_input_is_not_wrapped_when_no_policy_counts_it() -> None:
    stream = io.BytesIO(b"")
    seen = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"])
        return hello(environ, start_response)

    environ = create_environ("/")
    environ["wsgi.input"] = stream
    Middleware(app, Keep())(environ, StartResponse())
    assert seen == [stream]


# -- file_wrapper ---------------------------------------------------------------------


class FileWrapper:
    """A server's file wrapper (the server sends the file itself, e.g. with sendfile)."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.blksize), b"")


def test_file_wrapper_is_passed_through_and_finished_in_close() -> None:
    log: list[str] = []
    f = io.BytesIO(b"x" * 1000)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "1000")])
        return environ["wsgi.file_wrapper"](f)

    environ = create_environ("/")
    environ["wsgi.file_wrapper"] = FileWrapper
    result = Middleware(app, Recorder("a", log))(environ, StartResponse())
    assert isinstance(result, FileWrapper)  # the server can still use sendfile
    result.close()
    result.close()
    assert f.closed
    assert log == ["enter a", "exit a 200 1000 None"]


# -- the exchange ---------------------------------------------------------------------


def test_exchange_reads_the_environ_lazily() -> None:
    environ = create_environ(
        "/a%C3%A9/b?x=1",
        base_url="https://example.com:8443/root",
        headers={"X-Request-ID": "abc", "User-Agent": "ua"},
        content_type="text/plain",
        method="POST",
        data=b"hi",
        environ_overrides={"REMOTE_ADDR": "10.0.0.7"},
    )
    ex = WsgiExchange(environ)
    assert ex.protocol == "wsgi"
    assert ex.method == "POST" and ex.path == "/root/aé/b"
    assert ex.header("x-request-id") == "abc" and ex.header("user-agent") == "ua"
    assert ex.header("content-type") == "text/plain" and ex.header("content-length") == "2"
    assert ex.header("missing") is None and ex.header_all("missing") == []
    assert {"x-request-id", "user-agent", "content-type", "content-length", "host"} <= set(ex.header_names())
    assert ex.client == "10.0.0.7" and ex.query == "x=1" and ex.scheme == "https"
    assert ex.host == "example.com:8443"
    assert ex.native is environ
    assert ex.route is None


def test_the_caller_reaches_the_app_through_the_environ() -> None:
    from kitmw.auth import AuthPolicy, Backend, Principal

    alice = Principal("alice", ["read", "write"], {"sub": "alice"}, "login")

    class Login(Backend):  # auth's WSGI side publishes the caller, not the driver
        def authenticate(self, ex: Exchange) -> Principal | None:
            return alice

    seen = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(
            {k: environ.get(k) for k in ("kitmw.user", "kitmw.scopes", "kitmw.claims", "REMOTE_USER")}
        )
        return hello(environ, start_response)

    with client(Middleware(app, AuthPolicy(backend=Login()))) as c:
        c.get("/")
    assert seen == {
        "kitmw.user": alice,
        "kitmw.scopes": frozenset({"read", "write"}),
        "kitmw.claims": {"sub": "alice"},
        "REMOTE_USER": "alice",
    }


def test_response_header_is_readable_in_exit() -> None:
    class Peek(Policy):
        def __init__(self) -> None:
            self.value: str | None = None

        def exit(self, ex: Exchange) -> None:
            self.value = ex.response_header("content-type")

    peek = Peek()
    with client(Middleware(hello, peek)) as c:
        c.get("/")
    assert peek.value == "text/plain"


# -- routes and stack ------------------------------------------------------------------


def flask_app() -> Any:
    from flask import Flask

    app = Flask("kitmw_test_wsgi")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return str(item_id)

    return app


class RouteOf(Policy):
    def __init__(self) -> None:
        self.routes: list[str] = []

    def exit(self, ex: Exchange) -> None:
        self.routes.append(ex.route_label())


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda app, p: Middleware(app, p), id="flask-app"),
        pytest.param(lambda app, p: Middleware(app.wsgi_app, p), id="wsgi_app"),
        pytest.param(lambda app, p: kitmw.stack(app, metrics=p), id="stack"),
    ],
)
def test_flask_route_template(wrap: Any) -> None:
    app = flask_app()
    routes = RouteOf()
    mw = wrap(app, routes)
    if mw is not None and not isinstance(mw, Middleware):  # pragma: no cover
        raise AssertionError(mw)
    with client(mw) as c:
        assert c.get("/items/42").text == "42"
        assert c.get("/nope/1").status_code == 404
    assert routes.routes == ["/items/<int:item_id>", "<unmatched>"]


def test_flask_wsgi_app_reassigned_in_place_and_behind_proxy_fix() -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = flask_app()
    routes = RouteOf()
    app.wsgi_app = Middleware(ProxyFix(app.wsgi_app), routes)  # type: ignore[method-assign]
    with app.test_client() as c:
        assert c.get("/items/7").text == "7"
    assert routes.routes == ["/items/<int:item_id>"]


def test_route_resolved_before_dispatch_uses_the_url_map() -> None:
    class EarlyRoute(Policy):
        def __init__(self) -> None:
            self.route: str | None = None

        def enter(self, ex: Exchange) -> Rejection | None:
            self.route = ex.route
            return None

    early = EarlyRoute()
    with client(Middleware(flask_app(), early)) as c:
        c.get("/items/3")
    assert early.route == "/items/<int:item_id>"


def test_route_cache_read_while_another_thread_reads_it_gives_the_route() -> None:
    """The Flask route cache under a threaded server: another thread's ``get`` takes an
    entry out and puts it back (LRU order). A request reading the cache at that moment
    must match again, never take the missing entry for "no route"."""
    from kitmw._cache import LRUCache

    class Contended(LRUCache[Any, Any]):
        """Another thread's get() starts its pop at this thread's first look at the key."""

        armed = False
        stolen: Any = None

        def _other_thread_pops(self, key: Any) -> None:
            if self.armed and dict.__contains__(self, key):
                self.armed = False
                self.stolen = (key, dict.pop(self, key))

        def __contains__(self, key: object) -> bool:
            found = dict.__contains__(self, key)
            self._other_thread_pops(key)  # lands right after the check
            return found

        def get(self, key: Any, default: Any = None, /) -> Any:
            self._other_thread_pops(key)  # lands before this read
            return super().get(key, default)

    class EarlyRoute(Policy):
        def __init__(self) -> None:
            self.routes: list[str | None] = []

        def enter(self, ex: Exchange) -> Rejection | None:
            self.routes.append(ex.route)
            return None

    early = EarlyRoute()
    mw = Middleware(flask_app(), early)
    cache = mw._routes = Contended(8)
    with client(mw) as c:
        c.get("/items/3")  # remembered
        cache.armed = True
        c.get("/items/3")
    assert cache.stolen is not None  # the contention happened
    assert early.routes == ["/items/<int:item_id>", "/items/<int:item_id>"]


def test_plain_wsgi_app_has_no_route() -> None:
    routes = RouteOf()
    with client(Middleware(hello, routes)) as c:
        c.get("/anything/9")
    assert routes.routes == ["<unmatched>"]


def test_stack_detects_wsgi() -> None:
    log: list[str] = []
    mw = kitmw.stack(hello, access_log=Recorder("a", log))
    assert isinstance(mw, Middleware)
    with client(mw) as c:
        assert c.get("/").text == "hello world"
    assert log == ["enter a", "exit a 200 11 None"]


def test_middleware_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="policies"):
        Middleware(hello, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="app"):
        Middleware("not an app")  # type: ignore[arg-type]


def test_exception_during_iteration_finishes_without_waiting_for_close() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        raise ValueError("late")
        yield b""  # pragma: no cover

    log: list[str] = []
    body = Middleware(app, Recorder("a", log))(create_environ("/"), StartResponse())
    with pytest.raises(ValueError):
        list(body)
    assert log[-1] == "exit a 500 0 ValueError"  # a test client that never closes still sees it


def test_app_error_wins_over_a_failing_exit(caplog: pytest.LogCaptureFixture) -> None:
    class BadExit(Policy):
        def exit(self, ex: Exchange) -> None:
            raise LookupError("exit bug")

    with pytest.raises(RuntimeError, match="boom"):
        Middleware(boom, BadExit())(create_environ("/"), StartResponse())
    assert any(r.exc_info and r.exc_info[0] is LookupError for r in caplog.records)


@pytest.mark.parametrize(
    ("twin", "options"),
    [
        pytest.param("AccessLog", {}, id="AccessLog"),
        pytest.param("Metrics", {"registry": "fresh"}, id="Metrics"),
        pytest.param("Tracing", {}, id="Tracing"),
        pytest.param("RateLimit", {"limit": "5/minute"}, id="RateLimit"),
        pytest.param("CircuitBreaker", {"fail_max": 3}, id="CircuitBreaker"),
        pytest.param("Auth", {"backend": "apikey"}, id="Auth"),
    ],
)
def test_twins_wrap_one_policy_with_the_asgi_options(twin: str, options: dict[str, Any]) -> None:
    import kitmw.asgi
    import kitmw.wsgi

    if options.get("registry") == "fresh":
        from prometheus_client import CollectorRegistry

        options["registry"] = CollectorRegistry()
    if options.get("backend") == "apikey":
        from kitmw.auth import APIKey

        options["backend"] = APIKey(keys={"k": "alice"})
    if twin == "CircuitBreaker":
        options["name"] = f"twin-{id(options)}"
    mw = getattr(kitmw.wsgi, twin)(hello, **options)
    assert isinstance(mw, Middleware) and len(mw.policies) == 1
    assert type(mw.policies[0]) is type(getattr(kitmw.asgi, twin)(hello, **options).policies[0])
    with client(mw) as c:
        r = c.get("/", headers={"X-API-Key": "k"})
    assert r.status_code == 200 and r.text == "hello world"


def test_twins_validate_options_at_construction() -> None:
    from kitmw.errors import ConfigError

    with pytest.raises(ConfigError, match="limit"):
        kitmw.wsgi.RateLimit(hello, limit="many per fortnight")


def test_flask_send_file_keeps_the_servers_file_wrapper(tmp_path: Any) -> None:
    from flask import Flask, send_file

    path = tmp_path / "report.bin"
    path.write_bytes(b"r" * 3000)
    app = Flask("kitmw_test_send_file")

    @app.get("/report")
    def report() -> Any:
        return send_file(path)

    log: list[str] = []
    environ = create_environ("/report")
    environ["wsgi.file_wrapper"] = FileWrapper
    result = Middleware(app, Recorder("a", log))(environ, StartResponse())
    assert isinstance(result, FileWrapper)
    assert b"".join(result) == b"r" * 3000
    result.close()
    assert log == ["enter a", "exit a 200 3000 None"]


def test_nested_twins_share_one_exchange() -> None:
    """Separate kitmw.wsgi layers see one exchange: the access record carries the trace id."""
    import logging

    from opentelemetry.sdk.trace import TracerProvider

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    def hello(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hi"]

    logger = logging.getLogger("kitmw.test.nested.wsgi")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    app = kitmw.wsgi.Tracing(
        kitmw.wsgi.AccessLog(kitmw.wsgi.Tracing(hello, tracer_provider=TracerProvider()), logger=logger),
        tracer_provider=TracerProvider(),
    )
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as c:
        r = c.get("/x")
    assert r.status_code == 200 and r.headers.get_list("x-request-id") == [records[0].request_id]
    assert records[0].trace_id is not None and len(records[0].trace_id) == 32
