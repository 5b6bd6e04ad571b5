"""Whether a webhook URL may be posted to: only when every address its host resolves to is
public, so that a registered URL cannot make the notifier reach its own network (SSRF).

The check is on addresses, never on the text of the host: ``127.1``, ``0x7f.1``,
``2130706433``, ``0``, ``[::ffff:127.0.0.1]`` and ``localhost`` all resolve to loopback and
are refused alike. The same resolution serves the notifier's connection
(:mod:`notifications.targets`), so that a DNS answer cannot change between check and use.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_SETTING = "IOTP_NOTIFY_ALLOW_PRIVATE_TARGETS"

# What getaddrinfo answers; tests replace it with a fake resolver (no DNS in a sandbox).
getaddrinfo = socket.getaddrinfo


class TargetRefused(ValueError):
    """The URL's host is, or resolves to, an address that is not public."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo client), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a globally routable unicast address.

    ``is_global`` alone is not enough: it holds for multicast (224.0.0.0/4, ff00::/8) and the
    deprecated site-local fec0::/10, and is false for ``::ffff:8.8.8.8`` whatever it maps to.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def host_and_port(url: str) -> tuple[str, int]:
    """The host (without brackets) and port (the scheme's by default) a URL connects to."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL names no host")
    return host, parts.port or (443 if parts.scheme.lower() == "https" else 80)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order (numeric forms included).

    Raises ``OSError`` (``socket.gaierror``) when the name does not resolve.
    """
    try:  # a literal address (an IPv6 one perhaps with a zone) needs no resolver
        return [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        pass
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # no IPv6 zone
        if address not in found:
            found.append(address)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves to no address")
    return found


def refused_addresses(addresses: list[IPAddress]) -> list[IPAddress]:
    return [address for address in addresses if not is_public(address)]


def checked_addresses(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The addresses of ``host``, each of them allowed; raises :class:`TargetRefused` if one
    is not public (unless ``allow_private``), ``OSError`` if the name does not resolve."""
    addresses = resolve(host, port)
    refused = [] if allow_private else refused_addresses(addresses)
    if refused:
        shown = ", ".join(str(address) for address in refused)
        raise TargetRefused(
            f"the URL's host {host} resolves to {shown}, not a public address"
            f" (loopback, private, link-local, shared, multicast or reserved);"
            f" {ALLOW_PRIVATE_SETTING}=true allows it"
        )
    return addresses
