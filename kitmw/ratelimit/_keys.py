"""Who is the client? The socket peer, unless a trusted proxy says otherwise.

``X-Forwarded-For`` and RFC 7239 ``Forwarded`` are believed only when the socket peer
is one of the configured ``trusted_proxies``, and then only as far as trusted hops go:
the chain is walked from the right (the entries closest to us, written by proxies we
trust) and the first address that is not a trusted proxy is the client. An entry that
is not an address (``unknown``, an obfuscated identifier, garbage) ends the walk at the
last trusted hop: whatever lies left of it was written by someone we do not trust.
IPv6 clients are keyed by their network prefix (``/64`` by default), since one host
commonly holds a whole /64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from ..exchange import Exchange

__all__ = ["ClientAddress", "parse_networks"]

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NET = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Forwarding entries considered at most (from the right): a huge header costs nothing.
_MAX_HOPS = 32
_PROXY_HEADERS = ("auto", "x-forwarded-for", "forwarded")


def parse_networks(values: Any, option: str = "trusted_proxies") -> tuple[_NET, ...]:
    """Addresses and CIDRs, parsed once (``ipaddress``), or ConfigError naming ``option``."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    nets: list[_NET] = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"{option}: {value!r} is not an IP address or CIDR ({exc})") from None
    return tuple(nets)


def _parse_ip(text: str) -> _IP | None:
    """An address from a forwarding entry (``1.2.3.4``, ``1.2.3.4:80``, ``[v6]:80``, ``v6``)."""
    text = text.strip().strip('"').strip()
    if not text:
        return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
        return ip.ipv4_mapped  # type: ignore[union-attr,no-any-return]
    return ip


def _forwarded_for(values: list[str]) -> list[str]:
    """The ``for=`` value of each RFC 7239 element (``""`` for an element without one)."""
    out: list[str] = []
    for element in ",".join(values).split(","):
        found = ""
        for pair in element.split(";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip().lower() == "for":
                found = value
                break
        out.append(found)
    return out


class ClientAddress:
    """Computes the rate-limit key of the client address for an exchange.

    :param trusted_proxies: addresses/CIDRs whose forwarding headers are believed.
    :param ipv6_prefix: IPv6 clients are keyed by this prefix length (128: per address).
    :param proxy_header: ``"x-forwarded-for"``, ``"forwarded"`` or ``"auto"`` (the one
        present; when both are present they must agree, else the peer is the key,
        because a proxy that writes one usually passes the other through unchecked).
    """

    __slots__ = ("_header", "_nets", "_prefix")

    def __init__(
        self,
        *,
        trusted_proxies: Iterable[str] | str | None = (),
        ipv6_prefix: int = 64,
        proxy_header: str = "auto",
    ) -> None:
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
            raise ConfigError(f"ipv6_prefix: expected an integer from 1 to 128, got {ipv6_prefix!r}")
        if proxy_header not in _PROXY_HEADERS:
            raise ConfigError(
                f"proxy_header: expected one of {', '.join(_PROXY_HEADERS)}, got {proxy_header!r}"
            )
        self._nets = parse_networks(trusted_proxies)
        self._prefix = ipv6_prefix
        self._header = proxy_header

    def _trusted(self, ip: _IP) -> bool:
        return any(ip in net for net in self._nets)

    def _format(self, ip: _IP) -> str:
        if ip.version == 4 or self._prefix == 128:
            return str(ip)
        net = ipaddress.IPv6Network((int(ip) >> (128 - self._prefix) << (128 - self._prefix), self._prefix))
        return str(net)

    def _walk(self, entries: list[str], last: _IP) -> _IP:
        for raw in reversed(entries[-_MAX_HOPS:]):
            ip = _parse_ip(raw)
            if ip is None:
                return last  # garbage: nothing left of it can be trusted
            if not self._trusted(ip):
                return ip
            last = ip
        return last

    def __call__(self, ex: Exchange) -> str:
        peer = ex.client
        if peer is None:
            return "unknown"
        if not self._nets:
            if ":" not in peer:
                return peer  # IPv4 (or a name such as "testclient"): as is
            ip = _parse_ip(peer)
            return peer if ip is None else self._format(ip)
        ip = _parse_ip(peer)
        if ip is None:
            return peer
        if not self._trusted(ip):
            return self._format(ip)
        mode = self._header
        xff = ex.header_all("x-forwarded-for") if mode != "forwarded" else []
        fwd = ex.header_all("forwarded") if mode != "x-forwarded-for" else []
        if xff and fwd:
            a = self._walk(",".join(xff).split(","), ip)
            b = self._walk(_forwarded_for(fwd), ip)
            return self._format(a if a == b else ip)
        if xff:
            return self._format(self._walk(",".join(xff).split(","), ip))
        if fwd:
            return self._format(self._walk(_forwarded_for(fwd), ip))
        return self._format(ip)
