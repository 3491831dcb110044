"""DNS rebinding: when the app is exposed, the crawler checks the address each connection really reached.

check_address resolves a host name and refuses private answers; the connection then resolves the name
again. A hostile DNS server can answer the first lookup with a public address and the second with
127.0.0.1. The `rebinding_dns` fixture plays that server at its most successful: every lookup made by the
crawler's check (blocks.crawl) gets a public address, every other lookup (urllib3 connecting) gets
127.0.0.1. The pages are served by real loopback servers that log every request they receive.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections import Counter

import pytest

from blocks.crawl import (
    CrawlError,
    CrawlOptions,
    FetchFailed,
    HostGate,
    Task,
    crawl_site,
    fetch_document,
    fetch_robots,
    new_session,
    read_manifest,
    read_skipped,
)

PUBLIC = "93.184.216.34"  # what the crawler's check is told; nothing ever connects to it
CAMPUS = "www.rebind.edu.cn"  # the campus site (the allowed demo origin in exposed mode)
NEWS = "news.rebind.edu.cn"  # a host of the same site whose DNS answer rebinds to loopback
EXPOSED = {"allow_private": False, "delay": 0, "retries": 0, "read_timeout": 3}
LOCAL = dict(EXPOSED, allow_private=True)


@pytest.fixture(scope="module")
def servers():
    """Two loopback servers: one plays www (the campus site), the other the internal service news rebinds to."""
    from faults.hostile_site import start_hostile_site

    campus, internal = start_hostile_site(), start_hostile_site()
    yield campus, internal
    campus.stop()
    internal.stop()


@pytest.fixture()
def rebinding_dns(monkeypatch, servers):
    """Answer the crawler's check with PUBLIC and the connection with 127.0.0.1; count the answers."""
    real = socket.getaddrinfo
    answers: Counter[str] = Counter()

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in (CAMPUS, NEWS):
            return real(host, port, *args, **kwargs)
        asker = sys._getframe(1).f_globals.get("__name__")
        address = PUBLIC if asker == "blocks.crawl" else "127.0.0.1"
        answers[address] += 1
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # made-up names must not go to a proxy
    campus, _internal = servers
    yield answers
    campus.start_links = ["/good/1.htm"]
    campus.robots_redirect = None


def origin(host: str, server) -> str:
    return f"http://{host}:{server.server_address[1]}"


def test_start_page_on_a_rebinding_host_is_refused_before_any_request(servers, rebinding_dns, tmp_path):
    _campus, internal = servers
    url = origin(NEWS, internal) + "/start.htm"
    seen = len(internal.paths)
    with pytest.raises(CrawlError, match="connected to 127.0.0.1, a private/loopback"):
        list(crawl_site(url, tmp_path / "exposed", CrawlOptions(**EXPOSED)))
    assert rebinding_dns[PUBLIC] >= 1  # the resolve-time check was fooled: the connection check refused
    assert internal.paths[seen:] == []
    assert read_manifest(tmp_path / "exposed") == []

    # Control: a local app may crawl it, so the refusal above is the peer check, not a broken setup.
    last = list(crawl_site(url, tmp_path / "local", CrawlOptions(max_depth=0, **LOCAL)))[-1]
    assert last.saved == 1
    assert internal.paths[seen:] == ["/robots.txt", "/start.htm"]


@pytest.mark.parametrize("allow_private", [False, True])
def test_link_to_a_rebinding_host_is_skipped_as_private_address(
    allow_private, servers, rebinding_dns, tmp_path
):
    campus, internal = servers
    news_page = origin(NEWS, internal) + "/good/2.htm"
    campus.start_links = ["/good/1.htm", news_page]
    options = CrawlOptions(
        **dict(EXPOSED, allow_private=allow_private),
        max_depth=1,
        allowed_origins=(f"{CAMPUS}:{campus.server_address[1]}",),
    )
    seen = len(internal.paths)
    last = list(crawl_site(origin(CAMPUS, campus) + "/start.htm", tmp_path / "c", options))[-1]
    saved = {d["url"] for d in read_manifest(tmp_path / "c")}
    # The allowed demo origin is crawled in exposed mode although its connection goes to 127.0.0.1.
    assert {origin(CAMPUS, campus) + "/start.htm", origin(CAMPUS, campus) + "/good/1.htm"} <= saved
    if allow_private:
        assert news_page in saved
        assert internal.paths[seen:] == ["/robots.txt", "/good/2.htm"]
        return
    assert rebinding_dns[PUBLIC] >= 1
    assert news_page not in saved
    assert last.saved == 2
    skipped = {s["url"]: s for s in read_skipped(tmp_path / "c")}
    assert skipped[news_page]["reason"] == "private address"
    assert internal.paths[seen:] == []


def test_redirect_hops_to_a_rebinding_host_are_refused(servers, rebinding_dns, tmp_path):
    campus, internal = servers
    news = origin(NEWS, internal)
    detour = "/to/" + news + "/good/3.htm"
    campus.start_links = [detour]
    options = CrawlOptions(**EXPOSED, max_depth=1, allowed_origins=(f"{CAMPUS}:{campus.server_address[1]}",))
    seen = len(internal.paths)
    list(crawl_site(origin(CAMPUS, campus) + "/start.htm", tmp_path / "page", options))
    skipped = {s["url"]: s for s in read_skipped(tmp_path / "page")}
    assert skipped[origin(CAMPUS, campus) + detour]["reason"] == "private address"

    campus.robots_redirect = news + "/robots.txt"  # robots.txt redirects are checked hop by hop too
    with pytest.raises(CrawlError, match="connected to 127.0.0.1"):
        list(crawl_site(origin(CAMPUS, campus) + "/start.htm", tmp_path / "robots", options))
    assert internal.paths[seen:] == []
    assert rebinding_dns[PUBLIC] >= 2


def fetch(url: str, options: CrawlOptions):
    stop = threading.Event()
    return fetch_document(
        new_session(options), Task(url, 0, None), options, HostGate(stop), stop, lambda _: None
    )


def test_page_fetches_check_the_connected_peer_hop_by_hop(servers, rebinding_dns):
    """In a crawl the robots.txt fetch meets the rebinding first; here the page fetch itself is checked."""
    campus, internal = servers
    news = origin(NEWS, internal)
    exposed = CrawlOptions(**EXPOSED, allowed_origins=(f"{CAMPUS}:{campus.server_address[1]}",))
    seen = len(internal.paths)

    outcome = fetch(news + "/good/4.htm", exposed)
    assert (outcome.reason, outcome.text) == ("private address", "")
    assert f"{NEWS} connected to 127.0.0.1" in outcome.detail

    via_campus = origin(CAMPUS, campus) + "/to/" + news + "/good/5.htm"
    outcome = fetch(via_campus, exposed)  # the first hop (allowed origin) is fetched, the second refused
    assert outcome.reason == "private address"
    assert campus.paths[-1].startswith("/to/")

    with pytest.raises(FetchFailed) as caught:
        fetch_robots(new_session(exposed), news, exposed)
    assert caught.value.args[0] == "private address"

    # HTTPS connections are checked before the TLS handshake (else: a TLS error, "connection error").
    outcome = fetch(f"https://{NEWS}:{internal.server_address[1]}/good/6.htm", exposed)
    assert outcome.reason == "private address"
    assert internal.paths[seen:] == []

    outcome = fetch(news + "/good/7.htm", CrawlOptions(**LOCAL))  # control: the same fetch, local app
    assert outcome.reason is None and "第7号通知" in outcome.text
    assert internal.paths[seen:] == ["/good/7.htm"]
