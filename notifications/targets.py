"""Where a delivery connects: the address that was checked, never a second DNS answer.

The notifier resolves the webhook's host once per attempt, checks every address
(:mod:`iotp.public_address`), and then connects to the first of them by putting the address
itself in the request URL. What the receiver sees is unchanged: the ``Host`` header is the
URL's own, and for https the TLS server name (SNI) and the certificate check use the URL's
host through httpcore's ``sni_hostname`` request extension. So a DNS answer that changes
between the check and the connection (DNS rebinding) cannot send the POST elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from iotp.public_address import IPAddress, checked_addresses, host_and_port


@dataclass(frozen=True)
class PinnedTarget:
    """A request's URL with the checked address for host, and what keeps the name."""

    url: httpx.URL
    address: IPAddress
    host_header: str
    extensions: dict[str, Any]


def pinned_target(url: str, *, allow_private: bool) -> PinnedTarget:
    """The URL to connect to for ``url``, resolved and checked once.

    Raises :class:`iotp.public_address.TargetRefused` for an address that is not public and
    ``OSError`` when the name does not resolve.
    """
    host, port = host_and_port(url)
    address = checked_addresses(host, port, allow_private=allow_private)[0]
    original = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if original.scheme == "https":
        extensions["sni_hostname"] = host
    return PinnedTarget(
        url=original.copy_with(host=str(address)),
        address=address,
        host_header=original.netloc.decode("ascii"),
        extensions=extensions,
    )
