"""SIDECAR_HTTP_ADDR parsing, apart from the listener so that reading the configuration
does not import the HTTP server."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

DEFAULT_HOST: Final = "127.0.0.1"
_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_http_addr(value: str) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``:port`` (loopback) into (host, port).

    Raises ValueError whose message says what is wrong and shows the accepted forms,
    without quoting the value (configuration errors never echo what was set).
    """
    text = value.strip()
    forms = "expected host:port, [ipv6]:port or :port (e.g. 127.0.0.1:9464)"
    if not text:
        raise ValueError(f"empty address; {forms}")
    if "://" in text or "/" in text:
        raise ValueError(f"is a URL or path, not an address; {forms}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing ']' after the IPv6 address; {forms}")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the part in brackets is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"missing ':port' after ']'; {forms}")
        return host, _parse_port(value, rest[1:])
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"missing ':' before the port; {forms}")
    if ":" in host:
        raise ValueError("an IPv6 address needs brackets, e.g. [::1]:9464")
    port = _parse_port(value, port_text)
    if not host:
        # An unspecified host means loopback: exposing metrics beyond the workspace
        # must be an explicit choice.
        return DEFAULT_HOST, port
    if not _HOSTNAME.fullmatch(host):
        raise ValueError("the host is not a valid host name or IPv4 address")
    return host, port


def _parse_port(value: str, text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return int(text)
