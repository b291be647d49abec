"""Outbound proxies: an account's own (its ``proxy`` field) or ``KIRO_PROXY`` for all.

A proxy is a URL: ``http://`` (HTTP CONNECT), ``https://`` (HTTP CONNECT over TLS to the proxy,
its certificate checked as Kiro's is), ``socks4://``, ``socks5://`` (the gateway resolves the host
name) or ``socks5h://`` (the proxy resolves it), with optional credentials
(``socks5://user:password@host:1080``). An account's ``proxy`` may also be ``direct``: no proxy
for that account even when ``KIRO_PROXY`` is set. Credentials never leave this module unmasked:
:meth:`ProxyUrl.masked` is what listings, logs and errors show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DIRECT = "direct"
CONFIGURED_PROXY = "configured"  # setting an account's proxy to this undoes a run-time change
DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks5": 1080, "socks5h": 1080}


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    scheme: str  # one of DEFAULT_PORTS
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def remote_dns(self) -> bool:
        """The proxy resolves the target's name (SOCKS5h; HTTP CONNECT always sends the name)."""
        return self.scheme in ("socks5h", "http", "https")

    @property
    def tls(self) -> bool:
        """TLS to the proxy itself (``https://``), then CONNECT inside it."""
        return self.scheme == "https"

    def masked(self) -> str:
        """``socks5://***@host:1080``: where it is, never who logs in."""
        who = "***@" if self.username or self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{who}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"ProxyUrl({self.masked()!r})"

    __str__ = masked


def parse_proxy(url: str) -> ProxyUrl:
    """Parse a proxy URL; ``ValueError`` with a message that never repeats the credentials."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(
            "the proxy is not a valid URL (scheme://[user:password@]host:port)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"unsupported proxy scheme {scheme!r}: use http://, https://, socks4://, socks5:// "
            "or socks5h://"
        )
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL is scheme://[user:password@]host:port, without a path")
    return ProxyUrl(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def check_account_proxy(value: str) -> str:
    """An account's ``proxy`` field as given (``direct`` or a URL parse_proxy takes)."""
    if value.strip().lower() == DIRECT:
        return DIRECT
    parse_proxy(value)
    return value.strip()


def mask_proxy(value: str | None) -> str | None:
    """What to show for a configured proxy: None, ``direct`` or the masked URL."""
    if value is None or value == DIRECT:
        return value
    try:
        return parse_proxy(value).masked()
    except ValueError:
        return "(invalid)"


def proxy_password(value: str | None) -> str | None:
    """The password in a configured proxy URL, if any (for leak checks; never shown)."""
    if value is None or value == DIRECT:
        return None
    try:
        return parse_proxy(value).password
    except ValueError:
        return None
