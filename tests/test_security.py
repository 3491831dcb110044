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


# ---------------------------------------------------------------- issue 16, item 10: IPv6 forms of private IPv4

NON_PUBLIC_V4 = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "100.64.0.1", "0.0.0.0"]


def ipv6_forms(v4: str) -> list[str]:
    """Every IPv6 spelling that carries `v4`: mapped, IPv4-compatible, translated (SIIT), NAT64 (well-known
    and local-use prefixes), 6to4."""
    import ipaddress

    n = int(ipaddress.IPv4Address(v4))
    hi, lo = n >> 16, n & 0xFFFF
    return [f"::ffff:{v4}", f"::{v4}", f"::ffff:0:{hi:x}:{lo:x}", f"64:ff9b::{v4}", f"64:ff9b:1::{v4}",
            f"2002:{hi:x}:{lo:x}::1"]  # fmt: skip


NON_GLOBAL_V6 = ["fec0::1", "fec0:1:2::3", "feff::1", "fe80::1", "fd00::1", "fc00::1", "::1", "::",
                 "ff02::1", "2001:db8::1", "100::1", "64:ff9b:1::1"]  # fmt: skip


@pytest.mark.parametrize("v4", NON_PUBLIC_V4)
def test_every_ipv6_form_of_a_private_ipv4_address_is_not_public(v4):
    import ipaddress

    from blocks.crawl import is_public_address

    for form in ipv6_forms(v4):
        assert not is_public_address(ipaddress.ip_address(form)), form
    for form in ipv6_forms("8.8.8.8")[:1] + ipv6_forms("8.8.8.8")[3:4]:  # mapped and NAT64 of a public one
        assert is_public_address(ipaddress.ip_address(form)), form


@pytest.mark.parametrize("address", NON_GLOBAL_V6)
def test_non_global_ipv6_is_not_public_and_refused_when_exposed(address):
    import ipaddress

    from blocks.crawl import is_public_address

    assert not is_public_address(ipaddress.ip_address(address))
    with pytest.raises(FetchFailed, match="private"):
        check_address(f"http://[{address}]:8080/", CrawlOptions(**EXPOSED))


# ---------------------------------------------------------------- issue 16, item 7: the LLM base URL


LLM_PRIVATE_URLS = [u.rstrip("/") + ("/v1" if u.endswith("/") else "") for u in PRIVATE_SPELLINGS] + [
    "http://[64:ff9b::7f00:1]/v1",
    "http://[::127.0.0.1]/v1",
    "http://[fec0::1]/v1",
]


@pytest.mark.parametrize("backend", ["openai", "zhipu"])
@pytest.mark.parametrize("url", LLM_PRIVATE_URLS)
def test_exposed_app_refuses_a_private_llm_base_url_local_app_allows_it(url, backend):
    from blocks.llm import ClientSettings, SettingsError, make_client

    with pytest.raises(SettingsError, match="LLM API must be at a public address"):
        make_client(ClientSettings(backend, "m", url, api_key="k" * 20, allow_private=False))
    assert make_client(ClientSettings(backend, "m", url, api_key="k" * 20)).base_url == url


@pytest.fixture()
def internal_service():
    """A loopback service with a secret page, answering any path and method with it (status per path)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = int(self.path.strip("/").split("/")[0] or 200)
            data = b"<html>INTERNAL-SECRET root:x:0:0 token=INTERNAL-SECRET</html>"
            if self.path.endswith("/json/chat/completions"):
                data = b'{"detail": "INTERNAL-SECRET", "items": ["INTERNAL-SECRET"]}'
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("backend", ["openai", "zhipu"])
@pytest.mark.parametrize("path", ["200", "400", "404", "500", "200/json", "403/json", "422/json"])
def test_llm_errors_never_echo_the_body_of_what_the_base_url_reached(path, backend, internal_service):
    from blocks.llm import ClientSettings, LLMError, make_client

    client = make_client(ClientSettings(backend, "m", f"{internal_service}/{path}", api_key="k" * 20))
    with pytest.raises(LLMError) as caught:
        client.chat([{"role": "user", "content": "hi"}])
    assert "INTERNAL-SECRET" not in str(caught.value) and "root:x" not in str(caught.value)


@pytest.mark.parametrize("backend", ["openai", "zhipu"])
def test_exposed_llm_client_checks_the_address_each_connection_reached(backend, monkeypatch):
    """DNS rebinding: the base URL's name resolves to a public address for the check and to 127.0.0.1 for
    the connection; the connection is refused before a byte is sent, and the run stops (not per page)."""
    import socket
    import sys

    from fake_llm_server import FakeLLMServer

    from blocks.llm import ClientSettings, RefusedAddressError, make_client

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "llm.rebind.example.com":
            return real(host, port, *args, **kwargs)
        asker = sys._getframe(1).f_globals.get("__name__")
        return real("93.184.216.34" if asker == "blocks.crawl" else "127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with FakeLLMServer() as server:
        url = server.url.replace("127.0.0.1", "llm.rebind.example.com")
        client = make_client(ClientSettings(backend, "m", url, api_key="k" * 20, allow_private=False))
        with pytest.raises(RefusedAddressError, match="127.0.0.1"):
            client.chat([{"role": "user", "content": "hi"}])
        assert server.requests == []
        local = make_client(ClientSettings(backend, "m", url, api_key="k" * 20))
        assert local.chat([{"role": "user", "content": "hi"}]) == "hi"  # a local app may use it
