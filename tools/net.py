"""Where an outgoing request may go: every address a URL's host resolves to is checked
before anything is sent (no loopback, private, link-local, CGNAT, multicast, reserved or
cloud metadata address, unless the host is allowed), and the connection goes to the checked
address, so a DNS answer changed since the check cannot redirect it. Used by `fetch_url`
and by webhook deliveries."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from tools.contract import ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- where a request may go ------------------------------------------------------------------

_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure WireServer (a public address inside Azure)
    "192.0.0.192",  # Oracle Cloud
))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(ip: IPAddress, *, private_allowed: bool = False) -> str | None:
    """Why `ip` must not be reached, or None for an ordinary public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 reaches that IPv4 address: judge it instead.
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return refusal(embedded, private_allowed=private_allowed)
    if ip in _METADATA:
        return "a cloud metadata address"
    if private_allowed:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or ip in _CGNAT or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def checked_url(raw: str | httpx.URL) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ToolError(f"{raw!s} is not a valid URL: {exc}") from None
    if not url.scheme:
        raise ToolError(f"{raw!s} is not a full URL: start it with https://")
    if url.scheme not in ("http", "https"):
        raise ToolError(f"only http:// and https:// URLs can be fetched, not {url.scheme}://")
    if not url.raw_host:
        raise ToolError(f"{raw!s} has no host")
    if url.userinfo:
        raise ToolError(f"{url.copy_with(userinfo=b'')} was given with a user name or password; "
                        "those are not sent")
    return url


def normal_host(host: str) -> str:
    """`host` as allow-list entries spell it: lower case, no trailing dot, IPv6 bracketed."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else str(address)


def port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def checked_addresses(url: httpx.URL, allow_private: frozenset[str] = frozenset(),
                            *, verb: str = "fetch") -> list[IPAddress]:
    """Every address `url`'s host resolves to, refusing the host if any one is off limits
    (a name that resolves to a public and a private address is refused)."""
    host, port = url.raw_host.decode("ascii"), port_of(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ToolError(f"could not resolve {host}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                                   for info in infos))
    key = normal_host(url.raw_host.decode("ascii"))
    allowed = key in allow_private or f"{key}:{port}" in allow_private
    for address in addresses:
        reason = refusal(address, private_allowed=allowed)
        if reason is not None:
            shown = host if host == str(address) else f"{host} ({address})"
            raise ToolError(f"refused to {verb} {url}: {shown} is {reason}")
    if not addresses:
        raise ToolError(f"could not resolve {host}")
    return addresses


async def send_checked(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress], *,
                       method: str = "GET", headers: dict[str, str] | None = None,
                       content: bytes | None = None) -> httpx.Response:
    """The response (streaming) from the first checked address that accepts a connection. The
    request goes to that address, not to the name, so a DNS answer changed since the check
    cannot redirect it; the name still goes in the Host header and TLS SNI, and the server's
    certificate is verified against it."""
    host = url.raw_host.decode("ascii")
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            method, url.copy_with(host=str(address)), content=content,
            headers={**(headers or {}), "Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": host})
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
    raise ToolError(f"could not connect to {host}: {failure}")
