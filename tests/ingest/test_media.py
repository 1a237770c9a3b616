"""check_media_url (callrec.ingest.media): host and port against a parsed allow-list."""

from __future__ import annotations

import pytest

from callrec.config import HostAllowList
from callrec.errors import BadRequest
from callrec.ingest.media import check_media_url

ALLOWED = HostAllowList.parse(
    ["api.twilio.com", "127.0.0.1", "127.0.0.1:8443", "[::1]:9000"], key="ingest.media_hosts"
)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1",
        "https://API.Twilio.com:443/x",
        "http://127.0.0.1/x",
        "http://127.0.0.1:80/x",
        "http://127.0.0.1:8443/x",
        "https://127.0.0.1:8443/x",
        "http://[::1]:9000/x",
        "http://[0:0::1]:9000/x",
    ],
)
def test_allowed(url: str) -> None:
    assert check_media_url(url, ALLOWED) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:18103/latest/meta-data/iam",  # the port bypass of issue 9
        "https://api.twilio.com:8443/x",
        "http://127.0.0.1:443/x",  # the default port of another scheme
        "http://[::1]/x",
        "http://127.1/x",
        "http://localhost:8443/x",  # a name is not its address
        "https://api.twilio.com.evil.example/x",
        "http://127.0.0.1%3A18103/x",
    ],
)
def test_host_or_port_not_allowed(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_media_url(url, ALLOWED)
    assert info.value.code == "media_host_not_allowed"
    assert "ingest.media_hosts" in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://api.twilio.com/x",
        "/2010-04-01/x",
        "https://user:pw@api.twilio.com/x",
        "https://user@api.twilio.com/x",
        "http://api.twilio.com/x",  # plain http off loopback
        "https://api.twilio.com:99999/x",
        "http://127.0.0.1\t:18103/x",  # urllib and yarl both drop the tab: refuse it instead
        "http://127.0.0.1:8443\\@evil.example/x",
        "https://api.twilio.com/x y",
    ],
)
def test_malformed(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_media_url(url, ALLOWED)
    assert info.value.code == "media_url_invalid"


def test_an_empty_list_allows_nothing() -> None:
    with pytest.raises(BadRequest):
        check_media_url("https://api.twilio.com/x", HostAllowList(key="tenants.acme.callback_hosts"))
