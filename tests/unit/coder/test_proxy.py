"""The proxy decision for requests to Coder, case by case against Go's rules.

Most cases come from golang.org/x/net/http/httpproxy's own tests (proxy_test.go:
proxyForURLTests, UseProxyTests, TestAllNoProxy, TestInvalidNoProxy), which is what Go's
net/http.ProxyFromEnvironment, and so Coder's agent, runs.
"""

from __future__ import annotations

import base64

import pytest

from sidecar.coder.proxy import NoProxy, ProxyConfig, ProxyURL, parse_proxy
from sidecar.coder.session import describe_proxy
from sidecar.settings import load_settings
from sidecar.variables import ConfigError

TOKEN = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
PASSWORD = "hunter2-secret"


def config(
    http_proxy: str | None = None, https_proxy: str | None = None, no_proxy: str | None = None
) -> ProxyConfig:
    return ProxyConfig.parse(http_proxy=http_proxy, https_proxy=https_proxy, no_proxy=no_proxy)


def proxy_address(cfg: ProxyConfig, url: str) -> str | None:
    proxy = cfg.decide(url).proxy
    return None if proxy is None else proxy.address


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- proxy values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        # Go: a value without a scheme (or whose "scheme" is a host name) means http://.
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("cache.corp.example.com:1234", "http://cache.corp.example.com:1234"),
        ("cache.corp.example.com", "http://cache.corp.example.com:80"),
        ("localhost", "http://localhost:80"),
        ("localhost:3128", "http://localhost:3128"),
        ("https://cache.corp.example.com", "https://cache.corp.example.com:443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://127.0.0.1:8080", "https://127.0.0.1:8080"),
        # Parsed as Go parses them; whether they can be used is config's question.
        ("socks5://127.0.0.1", "socks5://127.0.0.1:1080"),
        ("foo://host", "foo://host"),
        ("HTTP://Proxy.Corp:3128", "http://proxy.corp:3128"),
        ("http://[2001:db8::1]:3128", "http://[2001:db8::1]:3128"),
        ("[2001:db8::1]:3128", "http://[2001:db8::1]:3128"),
        ("  http://proxy.corp:3128/  ", "http://proxy.corp:3128"),
    ],
)
def test_proxy_values(value: str, address: str) -> None:
    assert parse_proxy(value).address == address


@pytest.mark.parametrize(
    ("value", "user", "password"),
    [
        ("http://sidecar:pa55@proxy.corp:3128", "sidecar", "pa55"),
        ("sidecar:pa55@proxy.corp:3128", "sidecar", "pa55"),
        # Percent-escapes are decoded, as Go's url.User does.
        ("http://me%40corp:p%3Ass%40w0rd@proxy.corp:3128", "me@corp", "p:ss@w0rd"),
        ("http://sidecar:pässwörd@proxy.corp:3128", "sidecar", "pässwörd"),
        # A user without a password still sends Basic "user:" (Go's proxyAuth).
        ("http://sidecar@proxy.corp:3128", "sidecar", ""),
    ],
)
def test_credentials_become_basic_proxy_authorization(value: str, user: str, password: str) -> None:
    proxy = parse_proxy(value)
    assert proxy.address == "http://proxy.corp:3128"
    assert proxy.username == user
    assert proxy.authorization == basic(user, password)


def test_no_credentials_no_authorization() -> None:
    assert parse_proxy("http://proxy.corp:3128").authorization is None


def test_the_password_stays_out_of_repr_and_address() -> None:
    proxy = parse_proxy(f"http://sidecar:{PASSWORD}@proxy.corp:3128")
    assert PASSWORD not in repr(proxy)
    assert PASSWORD not in proxy.address
    assert PASSWORD not in repr(config(https_proxy=f"http://u:{PASSWORD}@p:1"))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://",
        "http://:3128",
        "http://user:pw@",
        "http://proxy.corp:3128 x",
        f"http://user:{PASSWORD}@proxy:port",
        f"http://user:{PASSWORD}@proxy:99999",
        "proxy.corp:-1",
        "http://pro xy:3128",
        "http://proxy\n.corp:3128",
    ],
)
def test_invalid_proxy_values_never_quote_the_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"must not|not a valid") as info:
        parse_proxy(value)
    assert PASSWORD not in str(info.value)
    assert "corp" not in str(info.value)


# --- which variable for which URL --------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "url", "expected"),
    [
        (config(http_proxy="http.proxy.tld"), "http://example.com", "http://http.proxy.tld:80"),
        # Don't use the https proxy for http, nor the http proxy for https.
        (
            config(http_proxy="http.proxy.tld", https_proxy="secure.proxy.tld"),
            "http://insecure.tld/",
            "http://http.proxy.tld:80",
        ),
        (
            config(http_proxy="http.proxy.tld", https_proxy="secure.proxy.tld"),
            "https://secure.tld/",
            "http://secure.proxy.tld:80",
        ),
        (
            config(http_proxy="http.proxy.tld", https_proxy="https://secure.proxy.tld"),
            "https://secure.tld/",
            "https://secure.proxy.tld:443",
        ),
        (config(http_proxy="http.proxy.tld"), "https://secure.tld/", None),
        (config(https_proxy="secure.proxy.tld"), "http://insecure.tld/", None),
        (config(http_proxy="http.proxy.tld"), "ftp://insecure.tld/", None),
        (config(), "http://example.com", None),
        (config(), "https://example.com", None),
        # Upper-case schemes in the request URL are the same schemes.
        (
            config(https_proxy="secure.proxy.tld"),
            "HTTPS://secure.tld/",
            "http://secure.proxy.tld:80",
        ),
    ],
)
def test_scheme_selects_the_variable(cfg: ProxyConfig, url: str, expected: str | None) -> None:
    assert proxy_address(cfg, url) == expected


# --- localhost and loopback --------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.254",
        "[::1]",
        "[::1%25lo]",
        "[::ffff:127.0.0.1]",
    ],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_loopback_is_never_proxied(host: str, scheme: str) -> None:
    cfg = config(http_proxy="proxy.corp:3128", https_proxy="proxy.corp:3128")
    assert cfg.decide(f"{scheme}://{host}:8080/api").proxy is None
    assert cfg.decide(f"{scheme}://{host}/").proxy is None


@pytest.mark.parametrize("host", ["[::2]", "localhost.net", "local.localhost", "128.0.0.1"])
def test_names_that_only_look_like_loopback_are_proxied(host: str) -> None:
    assert proxy_address(config(http_proxy="proxy.corp:3128"), f"http://{host}/") is not None


# --- NO_PROXY ----------------------------------------------------------------------------

GO_NO_PROXY = (
    "foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, 192.168.1.3:80, "
    "10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, [2001:db8::52:0:3]:80, "
    "2002:db8:a::45/64"
)


# Go's UseProxyTests: (host, whether a request to host:80 goes through the proxy).
@pytest.mark.parametrize(
    ("host", "proxied"),
    [
        ("localhost", False),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("[::1]", False),
        ("[::2]", True),  # not a loopback address
        ("192.168.1.1", False),  # matches exact IPv4
        ("192.168.1.2", True),  # ports do not match
        ("192.168.1.3", False),  # matches exact IPv4:port
        ("192.168.1.4", True),  # no match
        ("10.0.0.2", False),  # matches IPv4/CIDR
        ("[2001:db8::52:0:1]", False),  # matches exact IPv6
        ("[2001:db8::52:0:2]", True),  # no match (the entry's port is 443)
        ("[2001:db8::52:0:3]", False),  # matches exact [IPv6]:port
        ("[2002:db8:a::123]", False),  # matches IPv6/CIDR
        ("[fe80::424b:c8be:1643:a1b6]", True),  # no match
        ("barbaz.net", True),  # does not match as .barbaz.net
        ("www.barbaz.net", False),  # does match as .barbaz.net
        ("foobar.com", False),  # does match as foobar.com
        ("www.foobar.com", False),  # match because NO_PROXY includes "foobar.com"
        ("foofoobar.com", True),  # not match as a part of foobar.com
        ("baz.com", True),  # not match as a part of barbaz.com
        ("localhost.net", True),  # not match as suffix of address
        ("local.localhost", True),  # not match as prefix as address
        ("barbarbaz.net", True),  # not match, wrong domain
        ("wildcard.io", True),  # does not match as *.wildcard.io
        ("nested.wildcard.io", False),  # match as *.wildcard.io
        ("awildcard.io", True),  # not a match because of '*'
    ],
)
def test_go_use_proxy_table(host: str, proxied: bool) -> None:
    cfg = config(http_proxy="proxy.corp:3128", https_proxy="proxy.corp:3128", no_proxy=GO_NO_PROXY)
    assert (cfg.decide(f"http://{host}:80/").proxy is not None) is proxied
    # Go's TestAllNoProxy: "*" turns every one of them direct.
    assert (
        config(http_proxy="proxy.corp:3128", no_proxy="*").decide(f"http://{host}:80/").proxy
        is None
    )


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        # Go's proxyForURLTests.
        ("example.com", "http://example.com/", False),
        (".example.com", "http://example.com/", True),
        ("ample.com", "http://example.com/", True),
        ("example.com", "http://foo.example.com/", False),
        (".foo.com", "http://example.com/", True),
        (".示例.com", "http://www.示例.com", False),
        ("xn--fsq092h.com", "http://www.示例.com", False),
        ("示例.com", "http://www.xn--fsq092h.com", False),
        # CVE-2025-22870: a zone id is no host name to match domains against.
        ("example.com", "http://[1000::%25.example.com]:123", True),
        # Case-insensitive, and spaces and empty entries around commas are skipped.
        ("EXAMPLE.com", "http://www.Example.COM/", False),
        (" , other.org ,, example.com ", "http://example.com/", False),
        # Leading dot and "*." match subdomains only; a bare name matches itself too.
        ("*.example.com", "http://example.com/", True),
        ("*.example.com", "http://a.b.example.com/", False),
        (".example.com", "http://a.example.com/", False),
        # A port on an entry matches that port only; URLs without one use the scheme's.
        ("example.com:8080", "http://example.com:8080/", False),
        ("example.com:8080", "http://example.com/", True),
        ("example.com:443", "https://example.com/", False),
        ("example.com:80", "http://example.com/", False),
        ("example.com:80", "https://example.com/", True),
        ("10.1.2.3:8080", "http://10.1.2.3:8080/", False),
        ("10.1.2.3:8080", "http://10.1.2.3:9090/", True),
        # IP addresses and CIDR ranges, IPv6 in brackets, IPv4-mapped IPv6 as IPv4.
        ("10.0.0.0/8", "http://10.200.3.4/", False),
        ("10.0.0.0/8", "http://11.0.0.1/", True),
        ("10.0.0.5/8", "http://10.9.9.9/", False),  # host bits set: still the /8
        ("10.0.0.0/8", "http://[::ffff:10.1.2.3]/", False),
        ("10.1.2.3", "http://[::ffff:10.1.2.3]/", False),
        ("2001:db8::/32", "http://[2001:db8:1::5]:8080/", False),
        ("[2001:db8::5]:8080", "http://[2001:db8::5]:8080/", False),
        ("[2001:db8::5]:8080", "http://[2001:db8::5]:9090/", True),
        ("2001:db8::5", "http://[2001:db8::5]:9090/", False),
        # Go's quirk: brackets without a port make a "domain" that never matches an IP.
        ("[2001:db8::5]", "http://[2001:db8::5]/", True),
        # Domain entries never match an IP address, whatever its text ends with.
        ("0.0.1", "http://10.0.0.1/", True),
        # Prefix notation only: a netmask is no CIDR range for Go.
        ("10.0.0.0/255.0.0.0", "http://10.1.1.1/", True),
        ("10.0.0.0/33", "http://10.1.1.1/", True),
        # Malformed entries are ignored, the rest still apply (Go's TestInvalidNoProxy).
        (":1", "http://example.com/", True),
        (":1, example.com", "http://example.com/", False),
        ("[::1, example.com", "http://example.com/", False),
    ],
)
def test_no_proxy_entries(no_proxy: str, url: str, proxied: bool) -> None:
    cfg = config(http_proxy="proxy.corp:3128", https_proxy="proxy.corp:3128", no_proxy=no_proxy)
    assert (cfg.decide(url).proxy is not None) is proxied


def test_star_only_counts_alone() -> None:
    # "*" as an entry disables proxying; "*" inside a name is just a character.
    assert NoProxy.parse("a.org, *").everything
    assert not NoProxy.parse("*example.com").everything
    assert proxy_address(config(http_proxy="p:1", no_proxy="*x.com"), "http://a.x.com/")


# --- describing the decision -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "url", "text"),
    [
        (config(), "https://coder.corp", None),
        (config(no_proxy="coder.corp"), "https://coder.corp", None),
        (
            config(https_proxy=f"http://sidecar:{PASSWORD}@proxy.corp:3128"),
            "https://coder.corp",
            "http://proxy.corp:3128 (from HTTPS_PROXY, with credentials)",
        ),
        (
            config(http_proxy="proxy.corp:3128"),
            "http://coder.corp",
            "http://proxy.corp:3128 (from HTTP_PROXY)",
        ),
        (
            config(https_proxy="proxy.corp:3128", no_proxy=".corp"),
            "https://coder.corp",
            "none: NO_PROXY matches coder.corp",
        ),
        (
            config(http_proxy="proxy.corp:3128"),
            "https://coder.corp",
            "none: HTTPS_PROXY is not set (HTTP_PROXY applies to http:// URLs only)",
        ),
        (
            config(https_proxy="proxy.corp:3128"),
            "https://localhost:3000",
            "none: localhost is loopback: never proxied",
        ),
    ],
)
def test_describe(cfg: ProxyConfig, url: str, text: str | None) -> None:
    assert cfg.describe(url) == text


# --- from the environment (config.load_settings) -----------------------------------------


def settings_env(**env: str) -> dict[str, str]:
    return {
        "CODER_AGENT_URL": "https://coder.corp",
        "CODER_AGENT_TOKEN": TOKEN,
        "HOME": "/home/coder",
        **env,
    }


def test_no_proxy_variables_no_proxy() -> None:
    settings = load_settings(settings_env())
    assert settings.proxy == ProxyConfig()
    assert describe_proxy(settings) is None


@pytest.mark.parametrize("lower_first", [False, True])
def test_upper_case_name_wins_as_in_go(lower_first: bool) -> None:
    pairs = [
        ("HTTPS_PROXY", "upper.proxy:1"),
        ("HTTP_PROXY", "upper.proxy:2"),
        ("NO_PROXY", "upper.corp"),
    ]
    lower = [(name.lower(), value.replace("upper", "lower")) for name, value in pairs]
    # The order of the environment must not matter.
    ordered = lower + pairs if lower_first else pairs + lower
    settings = load_settings({**settings_env(), **dict(ordered)})
    assert settings.proxy.https == parse_proxy("upper.proxy:1")
    assert settings.proxy.http == parse_proxy("upper.proxy:2")
    assert settings.no_proxy == "upper.corp"


def test_lower_case_names_are_read_when_upper_is_unset_or_blank() -> None:
    settings = load_settings(
        settings_env(
            HTTPS_PROXY="  ",
            https_proxy="lower.proxy:1",
            http_proxy="lower.proxy:2",
            no_proxy="coder.corp",
        )
    )
    assert settings.proxy.https == parse_proxy("lower.proxy:1")
    assert settings.proxy.http == parse_proxy("lower.proxy:2")
    assert describe_proxy(settings) == "none: NO_PROXY matches coder.corp"


def test_other_spellings_are_not_read() -> None:
    # Go's os.Getenv is case-sensitive: only the two spellings count.
    settings = load_settings(settings_env(Https_Proxy="mixed.proxy:1", No_Proxy="coder.corp"))
    assert settings.proxy == ProxyConfig()


def test_proxy_for_coder_from_settings() -> None:
    settings = load_settings(
        settings_env(
            HTTPS_PROXY=f"http://sidecar:{PASSWORD}@proxy.corp:3128", NO_PROXY="github.com"
        )
    )
    assert settings.proxy.decide(settings.coder_agent_url).proxy == ProxyURL(
        "http", "proxy.corp", 3128, "sidecar", PASSWORD
    )
    assert describe_proxy(settings) == "http://proxy.corp:3128 (from HTTPS_PROXY, with credentials)"
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())


def test_cgi_request_method_is_not_mirrored() -> None:
    # Go refuses HTTP_PROXY when REQUEST_METHOD is set (a CGI program's HTTP_PROXY can come
    # from a client's Proxy: header); the sidecar is never CGI, so it does not read it.
    settings = load_settings(
        settings_env(
            CODER_AGENT_URL="http://coder.corp", HTTP_PROXY="proxy.corp:3128", REQUEST_METHOD="GET"
        )
    )
    assert describe_proxy(settings) == "http://proxy.corp:3128 (from HTTP_PROXY)"


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"])
@pytest.mark.parametrize(
    "value", [f"http://sidecar:{PASSWORD}@proxy.corp:port", f"http://sidecar:{PASSWORD}@"]
)
def test_invalid_proxy_is_a_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(settings_env(**{name: value}))
    assert info.value.variable == name
    assert "valid proxy URL" in info.value.problem
    assert PASSWORD not in str(info.value)


def test_a_socks_proxy_for_coder_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(settings_env(https_proxy=f"socks5://u:{PASSWORD}@proxy.corp:1080"))
    assert info.value.variable == "https_proxy"
    assert "socks5:// proxies are not supported" in info.value.problem
    assert PASSWORD not in str(info.value)


def test_a_socks_proxy_coder_does_not_use_is_left_alone() -> None:
    # HTTP_PROXY never applies to an https Coder URL; the agent may use it elsewhere.
    settings = load_settings(settings_env(HTTP_PROXY="socks5://proxy.corp:1080"))
    assert describe_proxy(settings) == (
        "none: HTTPS_PROXY is not set (HTTP_PROXY applies to http:// URLs only)"
    )
    with pytest.raises(ConfigError):
        load_settings(settings_env(HTTP_PROXY="socks5://p:1", CODER_AGENT_URL="http://coder.corp"))


def test_no_proxy_is_never_an_error() -> None:
    # Go parses NO_PROXY "best effort": malformed entries are skipped, not fatal.
    settings = load_settings(settings_env(HTTPS_PROXY="proxy.corp:3128", NO_PROXY="[, :, /8, *."))
    assert describe_proxy(settings) == "http://proxy.corp:3128 (from HTTPS_PROXY)"
