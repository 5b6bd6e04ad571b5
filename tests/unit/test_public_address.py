"""Which addresses a webhook may reach, and where a delivery connects (no DNS: a fake)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from iotp import public_address
from iotp.public_address import TargetRefused, checked_addresses, is_public
from notifications.targets import pinned_target


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.31.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1",
        "100.127.255.254", "0.0.0.0", "224.0.0.251", "239.255.255.250", "240.0.0.1",
        "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "::ffff:127.0.0.1",
        "::ffff:10.0.0.1", "fe80::1", "fc00::1", "fd00::1", "fec0::1", "ff02::1", "ff0e::1",
        "2001:db8::1", "64:ff9b::7f00:1", "2002:7f00:1::", "2002:a00:1::",
    ],
)  # fmt: skip
def test_addresses_that_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def _resolver(*answers: str) -> Any:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers
        ]

    return getaddrinfo


def test_every_address_of_a_name_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(public_address, "getaddrinfo", _resolver("8.8.8.8", "10.0.0.1"))
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.1"):
        checked_addresses("hooks.test", 443, allow_private=False)
    found = checked_addresses("hooks.test", 443, allow_private=True)
    assert [str(a) for a in found] == ["8.8.8.8", "10.0.0.1"]


@pytest.mark.parametrize("host", ["127.1", "0x7f.1", "2130706433", "0", "localhost"])
def test_short_and_decimal_forms_resolve_to_loopback(host: str) -> None:
    with pytest.raises(TargetRefused):
        checked_addresses(host, 80, allow_private=False)


def test_a_pinned_https_target_keeps_its_name_for_host_sni_and_the_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(public_address, "getaddrinfo", _resolver("2001:4860:4860::8888"))
    target = pinned_target("https://Hooks.Test:8443/a/t0k3n?x=1", allow_private=False)
    assert str(target.url) == "https://[2001:4860:4860::8888]:8443/a/t0k3n?x=1"
    assert target.host_header == "hooks.test:8443"
    assert target.extensions == {"sni_hostname": "hooks.test"}
    monkeypatch.setattr(public_address, "getaddrinfo", _resolver("8.8.8.8"))
    plain = pinned_target("http://hooks.test/h", allow_private=False)
    assert (str(plain.url), plain.host_header, plain.extensions) == (
        "http://8.8.8.8/h",
        "hooks.test",
        {},
    )
