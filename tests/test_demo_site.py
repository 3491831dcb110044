"""Tests for the Eastlake University demo site served on loopback (blocks/demo_site.py)."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator

import pypdf
import pytest
import requests
from bs4 import BeautifulSoup

from blocks.demo_site import SITE_DIR, DemoSite, main, start_demo_site

PDF_URL = "/attach/2025/0310/summer-research-guide.pdf"
DOWNLOAD_URL = "/system/_content/download.jsp?urltype=news.DownloadAttachUrl&owner=1&wbfileid=99"
FACTS = json.loads((SITE_DIR / "facts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def site() -> Iterator[DemoSite]:
    """Run one demo site for the whole module."""
    with start_demo_site() as running:
        yield running


def get(site: DemoSite, path: str, **kwargs: object) -> requests.Response:
    """GET a site path without following redirects."""
    return requests.get(site.url + path, allow_redirects=False, timeout=5, **kwargs)


def decode_html(response: requests.Response) -> str:
    """Decode HTML the way a careful crawler should: the declared charset, read as its superset."""
    declared = (response.encoding or "utf-8").lower()
    return response.content.decode("gb18030" if declared in {"gb2312", "gbk"} else declared)


def extract_pdf_text(data: bytes) -> str:
    """Return the text of every page of a PDF."""
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def raw_status(site: DemoSite, target: str) -> tuple[int, bytes]:
    """Send a request target byte-for-byte (requests/urllib3 would normalise dot segments away)."""
    connection = http.client.HTTPConnection("127.0.0.1", site.port, timeout=5)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_site_has_at_least_16_pages_all_served(site: DemoSite) -> None:
    pages = sorted("/" + p.relative_to(SITE_DIR).as_posix() for p in SITE_DIR.rglob("*.htm"))
    assert len(pages) >= 16
    for path in pages:
        response = get(site, path)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith("text/html; charset="), path
        text = decode_html(response)
        for furniture in (
            "cookie-banner",
            "相关链接",
            "v_news_content",
            "window.print()",
            "other-university.edu.cn",
        ):
            assert furniture in text, (path, furniture)


def test_home_page_served_at_root(site: DemoSite) -> None:
    response = get(site, "/")
    assert response.status_code == 200
    assert "东湖大学" in decode_html(response)


def test_gbk_page_needs_gbk_decoding(site: DemoSite) -> None:
    response = get(site, "/housing/index.htm")
    assert response.headers["Content-Type"] == "text/html; charset=gb2312"
    assert b'<meta charset="gb2312">' in response.content
    assert "本科新生统一安排在镕园1至8栋" in response.content.decode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        response.content.decode("gb2312")
    with pytest.raises(UnicodeDecodeError):
        response.content.decode("utf-8")
    assert "镕园" not in response.text  # requests trusts the header's gb2312 and garbles it


def test_old_url_redirects_permanently(site: DemoSite) -> None:
    response = get(site, "/old-library.htm")
    assert response.status_code == 301
    assert response.headers["Location"] == site.url + "/library/index.htm"
    assert get(site, "/library").headers["Location"] == site.url + "/library/"
    assert "借阅区开放时间为每天7:30-22:30" in requests.get(site.url + "/old-library.htm", timeout=5).text


def test_broken_link_returns_404_page(site: DemoSite) -> None:
    assert 'href="/info/1021/3399.htm"' in get(site, "/index/tzgg/1.htm").text
    response = get(site, "/info/1021/3399.htm")
    assert response.status_code == 404
    assert "页面不存在" in response.text


def test_notice_list_links_cms_urls(site: DemoSite) -> None:
    html = get(site, "/index/tzgg.htm").text
    assert html.count('href="/info/1021/') >= 4
    assert 'href="/content.jsp?wbtreeid=1021&amp;wbnewsid=3457"' in html
    response = get(site, "/content.jsp?wbtreeid=1021&wbnewsid=3457")
    assert response.status_code == 200
    assert "关于图书馆2025年寒假开放时间的通知" in response.text
    assert get(site, "/content.jsp?wbtreeid=1021&wbnewsid=abc").status_code == 404


def test_pdf_attachment_has_extractable_fact(site: DemoSite) -> None:
    assert f'href="{PDF_URL}"' in get(site, "/info/1021/3460.htm").text
    response = get(site, PDF_URL)
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert "Application deadline: 15 April 2025" in extract_pdf_text(response.content)


def test_download_jsp_serves_pdf_as_attachment(site: DemoSite) -> None:
    response = get(site, DOWNLOAD_URL)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == 'attachment; filename="notice.pdf"'
    assert response.content == get(site, PDF_URL).content
    assert get(site, DOWNLOAD_URL.replace("wbfileid=99", "wbfileid=7")).status_code == 404


def test_portal_is_behind_cas_login_wall(site: DemoSite) -> None:
    response = get(site, "/portal/index.htm")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(site.url + "/authserver/login?service=http%3A%2F%2F")
    login = get(site, "/authserver/login?service=https%3A%2F%2Fportal.elu.edu.cn%2F")
    assert login.status_code == 200
    assert 'type="password"' in login.text and "统一身份认证" in login.text
    failed = requests.post(site.url + "/authserver/login", data={"username": "a", "password": "b"}, timeout=5)
    assert "用户名或密码错误" in failed.text


def test_session_and_tracking_urls_serve_the_same_page(site: DemoSite) -> None:
    assert 'href="/scholarships/index.htm;jsessionid=ABC123"' in get(site, "/library/index.htm").text
    assert 'href="/canteen/index.htm?utm_source=wechat"' in get(site, "/index.htm").text
    assert (
        get(site, "/scholarships/index.htm;jsessionid=ABC123").content
        == get(site, "/scholarships/index.htm").content
    )
    assert (
        get(site, "/canteen/index.htm?utm_source=wechat").content == get(site, "/canteen/index.htm").content
    )


def test_pages_contain_links_a_crawler_must_skip(site: DemoSite) -> None:
    html = get(site, "/library/index.htm").text
    for href in ("mailto:lib@elu.edu.cn", "javascript:void(0)", "http://www.other-university.edu.cn/"):
        assert f'href="{href}"' in html


@pytest.mark.parametrize(
    "target",
    [
        "/../blocks/demo_site.py",
        "/%2e%2e/blocks/demo_site.py",
        "/css/%2E%2E/%2e%2e/blocks/demo_site.py",
        "/css/..%2f..%2fblocks/demo_site.py",
        "/..%5c..%5cblocks/demo_site.py",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_path_traversal_is_refused(site: DemoSite, target: str) -> None:
    status, body = raw_status(site, target)
    assert status in (400, 404)
    assert b"start_demo_site" not in body and b"root:" not in body


def test_ground_truth_file_is_not_served(site: DemoSite) -> None:
    assert get(site, "/facts.json").status_code == 404


def test_conditional_get_returns_304(site: DemoSite) -> None:
    first = get(site, "/library/index.htm")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    by_etag = get(site, "/library/index.htm", headers={"If-None-Match": etag})
    assert by_etag.status_code == 304 and by_etag.content == b""
    by_date = get(site, "/library/index.htm", headers={"If-Modified-Since": modified})
    assert by_date.status_code == 304
    stale = get(site, "/library/index.htm", headers={"If-None-Match": '"0000"'})
    assert stale.status_code == 200 and stale.content == first.content
    assert (
        get(site, PDF_URL, headers={"If-None-Match": get(site, PDF_URL).headers["ETag"]}).status_code == 304
    )


def test_head_returns_headers_without_body(site: DemoSite) -> None:
    response = requests.head(site.url + "/about/index.htm", timeout=5)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["Content-Length"]) == len(get(site, "/about/index.htm").content)


@pytest.mark.parametrize("fact", FACTS, ids=[f"{f['page']}:{f['key'][:12]}" for f in FACTS])
def test_fact_key_is_in_page_main_text(site: DemoSite, fact: dict[str, str]) -> None:
    response = get(site, fact["page"])
    assert response.status_code == 200
    assert fact["question"] and fact["answer"]
    if fact["page"].endswith(".pdf"):
        assert fact["key"] in extract_pdf_text(response.content)
        return
    soup = BeautifulSoup(decode_html(response), "html.parser")
    main_text = soup.select_one(".v_news_content")
    assert fact["key"] in main_text.get_text()
    main_text.decompose()
    assert fact["key"] not in soup.get_text(), "key must come from the main content, not boilerplate"


def test_robots_txt_disallows_admin_and_search(site: DemoSite) -> None:
    response = get(site, "/robots.txt")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "Disallow: /admin/" in response.text and "Disallow: /search" in response.text
    assert get(site, "/admin/").status_code == 403


def test_requests_are_logged_and_stderr_stays_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    with start_demo_site() as quiet_site:
        get(quiet_site, "/index.htm?x=1", headers={"User-Agent": "UMTCDS-test"})
        requests.head(quiet_site.url + "/missing.htm", timeout=5)
        logged = list(quiet_site.requests)
    assert [(r.method, r.path, r.status) for r in logged] == [
        ("GET", "/index.htm?x=1", 200),
        ("HEAD", "/missing.htm", 404),
    ]
    assert logged[0].headers["User-Agent"] == "UMTCDS-test"
    assert capfd.readouterr().err == ""


def test_refuses_non_loopback_bind() -> None:
    with pytest.raises(ValueError, match="allow-public"):
        start_demo_site("0.0.0.0")
    with pytest.raises(SystemExit):
        main(["--host", "0.0.0.0", "--port", "0"])
