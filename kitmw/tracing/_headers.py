"""Header capture on spans: ``http.request.header.<name>`` / ``http.response.header.<name>``.

What is captured is read once, when a policy is built, exactly as contrib's
instrumentations read it: the ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST``
/ ``_SERVER_RESPONSE`` (server side) or ``_CLIENT_REQUEST`` / ``_CLIENT_RESPONSE``
(client side) and ``..._SANITIZE_FIELDS`` variables, split by contrib's
``get_custom_headers`` (comma-separated, items stripped), unless the policy's
``capture_request_headers`` / ``capture_response_headers`` options say otherwise.
The semantics are those of contrib's ``SanitizeValue``: a capture pattern is a regular
expression that must match the *whole* header name, a sanitize pattern one *found*
anywhere in it, both case-insensitive; attribute names come from contrib's
``normalise_request_header_name`` / ``normalise_response_header_name`` (lower case,
``-`` as ``_``), values are lists of strings, one item per header line (the shape
contrib's ASGI middleware writes).

Unlike contrib, credentials are redacted even when nobody lists them:
:data:`ALWAYS_REDACTED` is added to every sanitize list, so capturing ``.*`` never puts
a bearer token, a cookie or an API key on a span.

Nothing here runs per request unless a capture list is set: the policies hold ``None``
then. The decision for each header name (captured? under which attribute? redacted?)
is computed once per distinct name and kept in a bounded cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
)

from .._cache import BoundedCache
from ..errors import ConfigError
from ..exchange import Exchange

# The client variables' names: opentelemetry-util-http exports them only after 0.60b0, the
# lowest version kitmw supports (the server ones and the helpers are there).
OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST"
OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE"

__all__ = ["ALWAYS_REDACTED", "REDACTED", "HeaderCapture", "Pair", "captures", "neutral_request_pairs"]

#: The value a sanitized header gets on the span (contrib's).
REDACTED = "[REDACTED]"
#: Sanitize patterns (searched, case-insensitive) always in force: ``Authorization`` and
#: ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie``, and names that hold an API
#: key, a token, a secret, a password or a session (``X-API-Key``, ``X-Auth-Token``,
#: ``X-Client-Secret``, ``X-Session-Id``...).
ALWAYS_REDACTED = ("authorization", "cookie", "api[-_]?key", "token", "secret", "passw", "session")
#: Distinct header names remembered per capture before the cache starts over.
MAX_NAMES = 256

#: A header as a protocol holds it: (name, value), both ``str`` or both ``bytes``.
Pair = tuple[Any, Any]
_SKIP: Any = False  # cached for a name that is not captured

#: (request variable, response variable) per side.
_VARIABLES = {
    "server": (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    ),
    "client": (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST,
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE,
    ),
}


class HeaderCapture:
    """The headers of one direction (request or response) that go on a span.

    :param patterns: regular expressions, one of which must match a whole header name.
    :param sanitize: regular expressions searched in a captured name: its values become
        ``[REDACTED]``.
    :param normalise: header name -> attribute name (contrib's function for the direction).
    """

    __slots__ = ("_cache", "_match", "_normalise", "_sensitive")

    def __init__(self, patterns: list[str], sanitize: list[str], normalise: Callable[[str], str]) -> None:
        self._match = re.compile("|".join(patterns), re.IGNORECASE).fullmatch
        self._sensitive = re.compile("|".join(sanitize), re.IGNORECASE).search
        self._normalise = normalise
        self._cache: BoundedCache[Any, Any] = BoundedCache(MAX_NAMES)

    def _decide(self, name: str) -> Any:
        if not self._match(name):
            return _SKIP
        return self._normalise(name.lower()), bool(self._sensitive(name))

    def collect(self, pairs: Iterable[Pair], decode: Callable[[Any], str] | None = None) -> dict[str, list[str]]:
        """The attributes for ``pairs``: ``decode`` turns a name or value into ``str``
        (``None``: they are ``str`` already). A name is decided once, then cached."""
        out: dict[str, list[str]] = {}
        cache = self._cache
        cached = cache.get
        for name, value in pairs:
            entry = cached(name)
            if entry is None:
                entry = cache.put(name, self._decide(name if decode is None else decode(name)))
            if entry is _SKIP:
                continue
            key, redacted = entry
            text = REDACTED if redacted else (value if decode is None else decode(value))
            values = out.get(key)
            if values is None:
                out[key] = [text]
            else:
                values.append(text)
        return out


def neutral_request_pairs(ex: Exchange) -> list[tuple[str, str]]:
    """The request headers of any exchange, one pair per value, from its public surface."""
    return [(name, value) for name in dict.fromkeys(ex.header_names()) for value in ex.header_all(name)]


def captures(
    side: str,
    request: Iterable[str] | str | None,
    response: Iterable[str] | str | None,
    sanitize: Iterable[str] | str | None,
) -> tuple[HeaderCapture | None, HeaderCapture | None]:
    """The request and response captures of a ``side`` ("server" or "client") policy.

    An option left at ``None`` is read from its variable (``OTEL_INSTRUMENTATION_HTTP_
    CAPTURE_HEADERS_<SIDE>_<DIRECTION>``, ``..._SANITIZE_FIELDS``), as contrib's
    instrumentations read it; an empty list captures nothing. A direction with nothing
    to capture is ``None``. A pattern that is not a regular expression raises
    :class:`~kitmw.errors.ConfigError` naming the option or the variable.
    """
    request_var, response_var = _VARIABLES[side]
    sanitize_list = _patterns(sanitize, "sanitize_headers", OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS)
    sensitive = [*ALWAYS_REDACTED, *sanitize_list]
    found: list[HeaderCapture | None] = []
    for value, option, variable, normalise in (
        (request, "capture_request_headers", request_var, normalise_request_header_name),
        (response, "capture_response_headers", response_var, normalise_response_header_name),
    ):
        patterns = _patterns(value, option, variable)
        if not patterns:
            found.append(None)
            continue
        try:  # each pattern compiles; together they may not ("(?i)" after the first)
            found.append(HeaderCapture(patterns, sensitive, normalise))
        except re.error as exc:
            where = option if value is not None else variable
            if sanitize is None and not _compiles(sensitive):
                where = OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS
            elif sanitize is not None and not _compiles(sensitive):
                where = "sanitize_headers"
            raise ConfigError(f"{where}: the patterns do not make one regular expression ({exc})") from None
    return found[0], found[1]


def _compiles(patterns: list[str]) -> bool:
    try:
        re.compile("|".join(patterns))
    except re.error:
        return False
    return True


def _patterns(value: Iterable[str] | str | None, option: str, variable: str) -> list[str]:
    """The patterns of an option (``None``: of its variable), each checked to compile."""
    where = option
    if value is None:
        items: list[Any] = get_custom_headers(variable)
        where = variable
    elif isinstance(value, str):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigError(f"{option}: expected a list of header name patterns, got {value!r}") from None
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{option}: expected header name patterns (strings), got {item!r}")
        item = item.strip()
        if not item:
            continue  # contrib keeps it: a pattern matching only an empty name, never sent
        try:
            re.compile(item)
        except re.error as exc:
            raise ConfigError(f"{where}: {item!r} is not a regular expression ({exc})") from None
        patterns.append(item)
    return patterns
