"""Which proxy, if any, a request to a URL goes through: Go's `ProxyFromEnvironment`.

Coder's own agent is a Go program, and Go's net/http reads HTTPS_PROXY, HTTP_PROXY and
NO_PROXY (golang.org/x/net/http/httpproxy). Where the agent reaches Coder, the sidecar
must too, so the rules are Go's:

* an https URL uses HTTPS_PROXY, an http URL uses HTTP_PROXY; neither falls back to the
  other;
* a proxy value without a scheme means http:// (`proxy.corp:3128`);
* `localhost` and loopback addresses are never proxied;
* NO_PROXY is a comma-separated list, case-insensitive: `*` (nothing is proxied), an IP
  address or a CIDR range, a domain name (`example.com` matches it and its subdomains,
  `.example.com` and `*.example.com` only its subdomains); an IP address or domain may
  carry `:port` and then matches only that port. Malformed entries are ignored. Domain
  entries never match an IP address.

Deliberate differences: Go ignores an unparseable proxy value, here it is a configuration
error (a typo must not silently send traffic direct); Go refuses HTTP_PROXY when
REQUEST_METHOD is set (CGI, where a client's `Proxy:` header becomes HTTP_PROXY), but the
sidecar is never run as a CGI program, so its HTTP_PROXY always comes from the workspace.

Pure: no I/O, no environment. `config.py` hands the values in.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["SUPPORTED_SCHEMES", "Decision", "NoProxy", "ProxyConfig", "ProxyURL", "parse_proxy"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What aiohttp can speak to a proxy. Go also knows socks5; see config.load_settings.
SUPPORTED_SCHEMES: Final = frozenset(("http", "https"))
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
_SCHEME_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Whitespace and control characters are never part of a usable proxy URL.
_UNSAFE: Final = re.compile(r"[\x00-\x20\x7f-\x9f]")
_CIDR: Final = re.compile(r"[0-9a-f.:]+/[0-9]{1,3}")


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed proxy. `address` is safe to log; the password is kept out of the repr."""

    scheme: str
    host: str
    port: int | None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """scheme://host:port, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + (f":{self.port}" if self.port is not None else "")

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization value Go sends: Basic with UTF-8 `user:password`,
        whenever the URL has a user part (even an empty password)."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_proxy(value: str) -> ProxyURL:
    """Parse an HTTP(S)_PROXY value. Raises ValueError with a message that never quotes
    the value (it may hold a password)."""
    text = value.strip()
    if _UNSAFE.search(text):
        raise ValueError("must not contain spaces or control characters")
    # Go parses the value as a URL and, when that yields no scheme or no host (as for
    # `proxy.corp:3128`, whose "scheme" would be `proxy.corp`), reads it as http://value.
    if not _SCHEME_PREFIX.match(text):
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid proxy URL (is the port a number?)") from None
    if not parts.hostname:
        raise ValueError("is not a valid proxy URL: it has no host")
    scheme = parts.scheme.lower()
    return ProxyURL(
        scheme=scheme,
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS.get(scheme),
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


@dataclass(frozen=True, slots=True)
class NoProxy:
    """A parsed NO_PROXY list."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[tuple[IPAddress, str], ...] = ()  # (address, port or "")
    # (".example.com", port or "", whether the bare "example.com" matches too)
    domains: tuple[tuple[str, str, bool], ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[tuple[IPAddress, str]] = []
        domains: list[tuple[str, str, bool]] = []
        for raw in (value or "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if _CIDR.fullmatch(entry):
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                except ValueError:
                    pass
            split = _split_host_port(entry)
            host, port = split if split is not None else (entry, "")
            if not host:
                continue
            ip = _parse_ip(host, zone=False)
            if ip is not None:
                addresses.append((ip, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            bare = not host.startswith(".")
            domains.append((_idna("." + host if bare else host), port, bare))
        return cls(networks=tuple(networks), addresses=tuple(addresses), domains=tuple(domains))

    def matches(self, host: str, port: str, ip: IPAddress | None) -> bool:
        if self.everything:
            return True
        if ip is not None:
            return any(ip in net for net in self.networks) or any(
                ip == addr and entry_port in ("", port) for addr, entry_port in self.addresses
            )
        return any(
            (host.endswith(suffix) or (bare and host == suffix[1:])) and entry_port in ("", port)
            for suffix, entry_port, bare in self.domains
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The proxy for one URL, and why, for a person reading the log."""

    proxy: ProxyURL | None
    variable: str | None  # HTTPS_PROXY or HTTP_PROXY: the one the URL's scheme reads
    reason: str


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    http: ProxyURL | None = None
    https: ProxyURL | None = None
    no_proxy: NoProxy = NoProxy()

    @classmethod
    def parse(
        cls, *, http_proxy: str | None, https_proxy: str | None, no_proxy: str | None
    ) -> ProxyConfig:
        """Raises ValueError for an invalid proxy value (see `parse_proxy`)."""
        return cls(
            http=parse_proxy(http_proxy) if http_proxy and http_proxy.strip() else None,
            https=parse_proxy(https_proxy) if https_proxy and https_proxy.strip() else None,
            no_proxy=NoProxy.parse(no_proxy),
        )

    @property
    def configured(self) -> bool:
        return self.http is not None or self.https is not None

    def decide(self, url: str) -> Decision:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "https":
            variable, proxy = "HTTPS_PROXY", self.https
        elif scheme == "http":
            variable, proxy = "HTTP_PROXY", self.http
        else:
            return Decision(None, None, f"no proxy for {scheme or 'scheme-less'} URLs")
        if proxy is None:
            reason = f"{variable} is not set"
            if self.configured:
                # The common mistake: only the other variable is set, which Go never uses
                # for this scheme.
                other = "http" if scheme == "https" else "https"
                reason += f" ({other.upper()}_PROXY applies to {other}:// URLs only)"
            return Decision(None, variable, reason)
        try:
            port = parts.port
        except ValueError:
            return Decision(None, variable, "the URL's port is not a number")
        host = _idna(parts.hostname or "")
        ip = _parse_ip(host, zone=True)
        if host == "localhost" or (ip is not None and ip.is_loopback):
            return Decision(None, variable, f"{host} is loopback: never proxied")
        port_text = str(port if port is not None else _DEFAULT_PORTS[scheme])
        if self.no_proxy.matches(host, port_text, ip):
            return Decision(None, variable, f"NO_PROXY matches {host}")
        return Decision(proxy, variable, variable)

    def describe(self, url: str) -> str | None:
        """One line on how requests to `url` are routed; None when no proxy is set at all
        (nothing worth saying)."""
        if not self.configured:
            return None
        decision = self.decide(url)
        if decision.proxy is None:
            return f"none: {decision.reason}"
        credentials = ", with credentials" if decision.proxy.username is not None else ""
        return f"{decision.proxy.address} (from {decision.variable}{credentials})"


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: `host:port` or `[v6]:port`; None when there is no port or
    the brackets and colons do not fit (Go then reads the whole entry as a host)."""
    colon = text.rfind(":")
    if colon < 0:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or end + 1 != colon:
            return None
        host, after_open, after_close = text[1:end], 1, end + 1
    else:
        host, after_open, after_close = text[:colon], 0, 0
        if ":" in host:
            return None
    if "[" in text[after_open:] or "]" in text[after_close:]:
        return None
    return host, text[colon + 1 :]


def _parse_ip(text: str, *, zone: bool) -> IPAddress | None:
    """An IP address, as Go reads it: NO_PROXY entries take none with a zone
    (net.ParseIP), request hosts may carry one (netip.ParseAddr), which is then dropped.
    An IPv4-mapped IPv6 address counts as its IPv4 address, as Go's net.IP does."""
    address, percent, scope = text.partition("%")
    if percent and (not zone or not scope or ":" not in address):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _idna(host: str) -> str:
    """Non-ASCII labels in their ASCII (punycode) form, label by label so that a leading
    dot survives; a label that cannot be converted stays as it is."""
    if host.isascii():
        return host
    labels = []
    for label in host.split("."):
        try:
            labels.append(label if label.isascii() else label.encode("idna").decode("ascii"))
        except UnicodeError:
            labels.append(label)
    return ".".join(labels)
