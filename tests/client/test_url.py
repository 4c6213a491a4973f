"""Server addresses as the library and the command line read them."""

from __future__ import annotations

import pytest

from mqcore_client import Address, parse_url


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mqcore://example.org:7100", Address("example.org", 7100)),
        ("mqcore://example.org", Address("example.org", 7000)),
        ("MQCORE://[::1]:7001/", Address("::1", 7001)),
        ("tcp://h:1", Address("h", 1)),
        ("example.org:7100", Address("example.org", 7100)),
        (":7100", Address("127.0.0.1", 7100)),
        ("localhost", Address("localhost", 7000)),
        ("unix:///run/mq.sock", Address(path="/run/mq.sock")),
        ("unix:relative.sock", Address(path="relative.sock")),
    ],
)
def test_urls_are_read(text: str, address: Address) -> None:
    assert parse_url(text) == address
    assert parse_url(address.url) == address


@pytest.mark.parametrize(
    "text",
    ["", "http://h:1", "mqcore://h:port", "mqcore://h:0", "mqcore://h:70000", "h:1:2",
     "unix://", "mqcore://h:1/path", "[::1"],
)
def test_bad_urls_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_url(text)
