"""``configure(servers=...)``: uvicorn's and gunicorn's own loggers write kitmw's lines.

The loggers are set up here exactly as the servers set them up before they import the
application: uvicorn's own ``LOGGING_CONFIG`` through ``dictConfig``, gunicorn's
``glogging.Logger`` from a real ``Config``, and uvicorn-worker's sharing of gunicorn's
handler lists. Real uvicorn and gunicorn processes run in ``tests/e2e``.
"""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import pytest

from kitmw.errors import ConfigError
from kitmw.logging import JsonFormatter, bind_context, configure

NAMES = ("", "uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access", "gunicorn.error", "gunicorn.access", "app")


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    saved = {}
    for name in NAMES:
        lg = logging.getLogger(name)
        saved[name] = (lg.handlers, lg.handlers[:], lg.level, lg.propagate, lg.disabled)
    yield
    for name, (handlers, items, level, propagate, disabled) in saved.items():
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if h not in items:
                h.close()
        handlers[:] = items
        lg.handlers = handlers
        lg.level, lg.propagate, lg.disabled = level, propagate, disabled


def uvicorn_logging() -> None:
    """What ``uvicorn.Config`` does before it imports the application."""
    import uvicorn.config

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)


def gunicorn_logging(**settings: Any) -> Any:
    """What gunicorn's arbiter and uvicorn-worker do before the worker imports the application."""
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    cfg = Config()
    for key, value in settings.items():
        cfg.set(key, value)
    log = Logger(cfg)
    # uvicorn_worker.UvicornWorker.__init__: uvicorn's loggers get gunicorn's handler lists
    error, access = logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn.access")
    error.handlers, error.propagate = log.error_log.handlers, False
    access.handlers, access.propagate = log.access_log.handlers, False
    error.setLevel(log.error_log.level)
    return log


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def uvicorn_access_record() -> None:
    """The line uvicorn's h11/httptools protocols log per request."""
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/items/1", "1.1", 200
    )


def test_uvicorns_own_lines_become_kitmw_json_once_and_its_access_log_goes_quiet() -> None:
    uvicorn_logging()
    out = io.StringIO()
    configure("json", stream=out, servers=True)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42, extra={"color_message": "\x1b[36m42"})
    with bind_context(request_id="r-1", trace_id="a" * 32):
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=RuntimeError("kaput"))
        logging.getLogger("app").info("hello")
    uvicorn_access_record()
    got = lines(out)
    assert [(r["logger"], r["message"]) for r in got] == [
        ("uvicorn.error", "Started server process [42]"),
        ("uvicorn.error", "Exception in ASGI application"),
        ("app", "hello"),
    ]
    assert "color_message" not in got[0]  # uvicorn's coloured copy of the message is not a field
    assert (got[1]["request_id"], got[1]["trace_id"]) == ("r-1", "a" * 32)
    assert "RuntimeError: kaput" in got[1]["exc_info"]
    # uvicorn formats its access line only when uvicorn.access has a handler (per connection)
    assert not logging.getLogger("uvicorn.access").hasHandlers()


def test_server_access_log_keeps_the_servers_access_lines_in_kitmws_format() -> None:
    uvicorn_logging()
    out = io.StringIO()
    configure("json", stream=out, servers="uvicorn", server_access_log=True)
    uvicorn_access_record()
    (line,) = lines(out)
    assert (line["logger"], line["message"]) == ("uvicorn.access", '127.0.0.1:5000 - "GET /items/1 HTTP/1.1" 200')


def test_gunicorn_and_its_uvicorn_worker_lines_become_kitmw_json_once() -> None:
    log = gunicorn_logging(accesslog="-")
    out = io.StringIO()
    configure("json", stream=out, servers=True)
    log.info("Booting worker with pid: %s", 7)  # gunicorn.error
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    log.access_log.info('127.0.0.1 - - "GET / HTTP/1.1" 200 2')  # what gunicorn's access() logs
    assert [(r["logger"], r["message"]) for r in lines(out)] == [
        ("gunicorn.error", "Booting worker with pid: 7"),
        ("uvicorn.error", "Application startup complete."),
    ]
    assert not logging.getLogger("gunicorn.access").hasHandlers()


def test_a_second_configure_keeps_the_servers_on_its_new_handler() -> None:
    uvicorn_logging()
    first, second = io.StringIO(), io.StringIO()
    configure("json", stream=first, servers=True)
    handler = configure("logfmt", stream=second)
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
    assert first.getvalue() == ""
    assert second.getvalue().count("Uvicorn running on") == 1
    assert logging.getLogger("uvicorn").handlers == [handler]


def test_configure_replaces_the_documented_dictconfig_handler_instead_of_doubling_lines() -> None:
    """``--log-config`` (docs/snippets/uvicorn-logging.json) installed kitmw's formatter on the
    root logger; the application calling configure() too must not write each line twice."""
    from pathlib import Path

    uvicorn_logging()
    config = json.loads((Path(__file__).parent.parent / "docs/snippets/uvicorn-logging.json").read_text())
    out = io.StringIO()
    config["handlers"]["json"]["stream"] = out
    logging.config.dictConfig(config)
    assert any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
    configure("json", stream=out, servers=True)
    logging.getLogger("uvicorn.error").info("Waiting for application startup.")
    logging.getLogger("app").info("hello")
    assert [r["message"] for r in lines(out)] == ["Waiting for application startup.", "hello"]


def test_without_servers_their_loggers_are_left_alone() -> None:
    uvicorn_logging()
    before = logging.getLogger("uvicorn").handlers[:]
    configure("json", stream=io.StringIO())
    assert logging.getLogger("uvicorn").handlers == before


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"servers": "nginx"}, "servers", id="unknown-server"),
        pytest.param({"servers": ["uvicorn", 3]}, "servers", id="not-a-name"),
        pytest.param({"servers": 3}, "servers", id="not-names"),
        pytest.param({"servers": [["uvicorn"]]}, "servers", id="unhashable"),
        pytest.param({"server_access_log": True}, "server_access_log", id="access-without-servers"),
        pytest.param({"servers": True, "server_access_log": "yes"}, "server_access_log", id="access-not-bool"),
    ],
)
def test_bad_server_options_raise_config_error_naming_them(options: dict[str, Any], named: str) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    with pytest.raises(ConfigError, match=f"^{named}:"):
        configure("json", stream=io.StringIO(), **options)
    assert root.handlers == before  # nothing installed
