"""Security: an exposed app's crawler cannot reach private addresses, exposure needs a login, the demo
site serves nothing outside its folder. (The no-shell scan lives in tests/test_app.py.)"""

from __future__ import annotations

import http.client

import pytest

import app
from blocks.crawl import CrawlError, CrawlOptions, FetchFailed, check_address, crawl_site, read_manifest

EXPOSED = {"allow_private": False, "delay": 0, "retries": 0, "read_timeout": 3}


@pytest.fixture(scope="module")
def sites():
    """Two loopback servers: A plays the allowed demo site, B an internal service nobody may reach."""
    from faults.hostile_site import start_hostile_site

    a, b = start_hostile_site(), start_hostile_site()
    a.start_links = ["/good/1.htm"]
    yield a, b
    a.stop()
    b.stop()


PRIVATE_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",  # decimal
    "http://0x7f.1/",  # hex
    "http://017700000001/",  # octal
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fe80::1]/",
    "http://10.1.2.3/",
    "http://192.168.0.1/",
    "http://172.16.5.4/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://[fd00::1]/",
    "http://localhost/",
]


@pytest.mark.parametrize("url", PRIVATE_SPELLINGS)
def test_every_spelling_of_a_private_address_is_refused_when_exposed(url):
    with pytest.raises(FetchFailed) as caught:
        check_address(url, CrawlOptions(**EXPOSED))
    assert caught.value.args[0] == "private address"
    check_address(url, CrawlOptions())  # a local (loopback-bound) app may crawl them


def test_public_addresses_pass_the_check():
    for url in ("http://8.8.8.8/", "https://[2001:4860:4860::8888]/", "http://1.1.1.1:8080/x"):
        check_address(url, CrawlOptions(**EXPOSED))


@pytest.mark.parametrize(
    "spelling", ["127.0.0.1", "127.1", "0x7f.1", "[::ffff:127.0.0.1]", "2130706433", "localhost"]
)
def test_exposed_crawl_of_internal_service_is_refused_before_any_request(spelling, sites, tmp_path):
    _a, internal = sites
    port = internal.server_address[1]
    seen = len(internal.paths)
    with pytest.raises(CrawlError, match="private|Malformed start URL"):
        list(crawl_site(f"http://{spelling}:{port}/start.htm", tmp_path / "c", CrawlOptions(**EXPOSED)))
    assert internal.paths[seen:] == []


def test_allowed_demo_origin_cannot_redirect_the_crawler_inward(sites, tmp_path):
    demo, internal = sites
    inner = f"http://[::ffff:127.0.0.1]:{internal.server_address[1]}"
    options = CrawlOptions(allowed_origins=(demo.url.removeprefix("http://"),), **EXPOSED)
    seen = len(internal.paths)
    demo.start_links = [
        "/good/1.htm",
        "/to/" + inner.replace(":", "%3A") + "/good/2.htm",
        inner + "/good/3.htm",
    ]
    try:
        list(crawl_site(demo.url + "/start.htm", tmp_path / "c", options))
        demo.robots_redirect = inner + "/robots.txt"  # robots.txt redirects are checked hop by hop too
        with pytest.raises(CrawlError, match="private"):
            list(crawl_site(demo.url + "/start.htm", tmp_path / "d", options))
    finally:
        demo.robots_redirect = None
        demo.start_links = ["/good/1.htm"]
    assert internal.paths[seen:] == []
    assert {d["url"].rsplit("/", 1)[1] for d in read_manifest(tmp_path / "c")} == {"start.htm", "1.htm"}


def test_exposed_crawl_tab_refuses_loopback_targets(sites, workspace):
    import gradio as gr

    import ui_crawl
    from ui_common import Bilingual, UIContext

    _demo, internal = sites
    texts = Bilingual("en")
    with gr.Blocks() as blocks:
        lang = gr.State("en")
        texts.lang_state = lang
        picker = gr.Dropdown(choices=["p"], value="p", allow_custom_value=True)
        ui_crawl.build_tab(UIContext(L=texts, project=picker, lang=lang, default_model="", exposed=True))
    on_start = {f.name: f.fn for f in blocks.fns.values()}["on_start"]
    seen = len(internal.paths)
    run = on_start("p", internal.url + "/start.htm", 1, 10, 0, 1, True, None, "en")
    with pytest.raises(gr.Error, match="private"):
        next(run)
    assert internal.paths[seen:] == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "10.0.0.7"])
def test_login_required_on_every_non_loopback_bind(host, monkeypatch):
    monkeypatch.delenv("UMTCDS_AUTH", raising=False)
    with pytest.raises(app.LaunchError, match="without a login"):
        app.parse_args(["--host", host])
    assert app.parse_args(["--host", host, "--auth", "admin:long-enough"]).auth == ("admin", "long-enough")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_binds_need_no_login(host, monkeypatch):
    monkeypatch.delenv("UMTCDS_AUTH", raising=False)
    assert app.parse_args(["--host", host]).auth is None


@pytest.mark.parametrize(
    "target",
    ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc/passwd", "/facts.json", "/%00"],
)
def test_demo_site_serves_nothing_outside_its_pages(target):
    from blocks.demo_site import start_demo_site

    with start_demo_site() as site:
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5)
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
        conn.close()
    assert response.status in (400, 403, 404)
    assert b"root:" not in body and b'"answer"' not in body
