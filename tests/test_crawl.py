"""Crawl stage: URL rules, and whole crawls of a loopback campus site full of traps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from blocks.crawl import (
    CrawlError,
    CrawlOptions,
    canonical_url,
    classify_content,
    crawl_site,
    hamming,
    in_scope,
    parse_retry_after,
    read_manifest,
    read_skipped,
    request_stop,
    simhash,
    trap_key,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = {"delay": 0, "concurrency": 4, "read_timeout": 1, "retries": 1, "backoff": 0.1}


@pytest.fixture(scope="module")
def site():
    from crawl_site import start_trap_site

    server, thread = start_trap_site()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def trap_crawl(site, tmp_path_factory):
    """One crawl of the trap hub; tests below inspect its output and the server's request log."""
    out = tmp_path_factory.mktemp("trap") / "crawl"
    options = CrawlOptions(max_depth=20, max_pages=300, trap_budget=5, max_url_length=300, **FAST)
    progress = list(crawl_site(site.url + "/trap/start.htm", out, options))
    by_url = {d["url"]: d for d in read_manifest(out)}
    skipped = {s["url"]: s for s in read_skipped(out)}
    return out, progress[-1], by_url, skipped, list(site.requests)


def u(site, path: str) -> str:
    return site.url + path


# ---------------------------------------------------------------- pure rules


def test_origin_key_is_what_allowed_origins_list():
    from blocks.crawl import origin_key

    assert origin_key("http://127.0.0.1:8765/index.htm") == "127.0.0.1:8765"
    assert origin_key("https://www.x.edu.cn/a") == "www.x.edu.cn:443"
    assert origin_key("http://[::1]:8765/") == "::1:8765"  # no brackets, as the address checks compare


def test_canonical_url_drops_session_tracking_and_fragments_but_keeps_cms_ids():
    assert canonical_url("HTTP://WWW.X.edu.cn:80/a/b.htm#top") == "http://www.x.edu.cn/a/b.htm"
    assert canonical_url("https://x.edu.cn:443") == "https://x.edu.cn/"
    assert (
        canonical_url("/s/index.htm;jsessionid=9F8E7D", "http://x.edu.cn/a/") == "http://x.edu.cn/s/index.htm"
    )
    assert canonical_url("/p.htm?utm_source=wx&utm_medium=m&sessionid=1&id=5", "http://x.edu.cn/") == (
        "http://x.edu.cn/p.htm?id=5"
    )
    cms = canonical_url("http://x.edu.cn/content.jsp?wbtreeid=1021&wbnewsid=3457&columnId=7&articleId=9")
    for kept in ("wbtreeid=1021", "wbnewsid=3457", "columnId=7", "articleId=9"):
        assert kept in cms
    # the same page with parameters in another order is one URL
    assert canonical_url("http://x.edu.cn/c.jsp?b=2&a=1") == canonical_url("http://x.edu.cn/c.jsp?a=1&b=2")
    assert canonical_url("../info/1.htm", "http://x.edu.cn/news/list/") == "http://x.edu.cn/news/info/1.htm"
    for href in ("mailto:a@x.edu.cn", "javascript:void(0)", "tel:110", "ftp://x.edu.cn/f"):
        assert canonical_url(href, "http://x.edu.cn/") is None


def test_scope_uses_the_public_suffix_list():
    start = "http://www.xxx.edu.cn/"
    assert in_scope("http://lib.xxx.edu.cn/a.htm", start)
    assert in_scope("https://xxx.edu.cn/", start)
    assert not in_scope("http://yyy.edu.cn/", start)  # a sibling university under edu.cn
    assert not in_scope("http://www.xxx.edu.cn.evil.com/", start)
    assert in_scope("http://127.0.0.1:8000/x", "http://127.0.0.1:8000/")
    assert not in_scope("http://127.0.0.1:9000/x", "http://127.0.0.1:8000/")
    assert not in_scope("http://localhost:8000/x", "http://127.0.0.1:8000/")


def test_trap_patterns_group_calendars_pagers_and_searches():
    assert trap_key("http://x.cn/cal.htm?month=3") == trap_key("http://x.cn/cal.htm?month=4")
    assert trap_key("http://x.cn/list.jsp?PAGENUM=2&wbtreeid=1") == trap_key(
        "http://x.cn/list.jsp?PAGENUM=9&wbtreeid=1"
    )
    assert trap_key("http://x.cn/news?page=2") is not None
    assert trap_key("http://x.cn/content.jsp?wbnewsid=5&wbtreeid=1") is None


def test_content_type_comes_from_headers_not_extensions():
    assert classify_content("text/html; charset=gbk", "", b"") == "html"
    assert classify_content("application/octet-stream", 'attachment; filename="a.pdf"', b"") == "pdf"
    assert classify_content("application/octet-stream", "", b"%PDF-1.4") == "pdf"
    assert classify_content("video/mp4", "", b"").startswith("skip:media")
    assert classify_content("application/zip", "", b"").startswith("skip:media")
    assert classify_content("image/png", "", b"").startswith("skip:")


def test_retry_after_and_near_duplicate_fingerprints():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    text = "\n".join(
        f"第{i}条：图书馆自习室开放时间调整为每天7:30至22:30，请同学们遵守规定。" for i in range(20)
    )
    assert hamming(simhash(text), simhash(text + "\n浏览：99")) <= 3
    assert hamming(simhash(text), simhash("东湖大学2025年本科招生章程，理工类学费每学年6380元。" * 5)) > 3


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_clear_messages(site, tmp_path):
    with pytest.raises(CrawlError, match="Malformed start URL"):
        crawl_site("not a url", tmp_path / "a")
    with pytest.raises(CrawlError, match="Malformed start URL"):
        crawl_site("ftp://x.edu.cn/", tmp_path / "a")
    with pytest.raises(CrawlError, match="concurrency"):
        crawl_site(site.url + "/index.htm", tmp_path / "a", CrawlOptions(concurrency=0))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CrawlError, match="Cannot write"):
        crawl_site(site.url + "/index.htm", blocker / "out")
    with pytest.raises(CrawlError, match="Cannot reach"):
        list(crawl_site("http://127.0.0.1:9/", tmp_path / "b", CrawlOptions(**FAST)))
    with pytest.raises(CrawlError, match="must be an HTML page"):
        list(crawl_site(site.url + "/trap/download.jsp?fileid=7", tmp_path / "c", CrawlOptions(**FAST)))
    with pytest.raises(CrawlError, match="http 404"):
        list(crawl_site(site.url + "/nowhere.htm", tmp_path / "d", CrawlOptions(**FAST)))


def test_exposed_app_refuses_private_targets_except_the_allowed_demo_site(site, tmp_path):
    with pytest.raises(CrawlError, match="private/loopback"):
        crawl_site(site.url + "/index.htm", tmp_path / "a", CrawlOptions(allow_private=False))
    allowed = CrawlOptions(
        allow_private=False, allowed_origins=(f"127.0.0.1:{site.port}",), max_depth=0, **FAST
    )
    last = list(crawl_site(site.url + "/index.htm", tmp_path / "b", allowed))[-1]
    assert last.saved == 1


# ---------------------------------------------------------------- a whole crawl of the trap site


def test_robots_first_obeyed_and_honest_user_agent(site, trap_crawl):
    _out, _last, _docs, skipped, requests = trap_crawl
    assert requests[0].path == "/robots.txt"
    assert not any(r.path.startswith(("/admin", "/search")) for r in requests)
    assert skipped[u(site, "/admin/secret.htm")]["reason"] == "robots.txt"
    assert all("UMTCDS-crawler" in r.headers.get("User-Agent", "") for r in requests)


def test_manifest_records_provenance_and_paragraph_texts(site, trap_crawl):
    out, last, docs, _skipped, _requests = trap_crawl
    assert last.status == "done" and last.saved == len(docs)
    needed = {"url", "final_url", "title", "depth", "parent_url", "content_type", "encoding", "fetched_at",
              "sha256", "text_file", "status"}  # fmt: skip
    for doc in docs.values():
        assert needed <= doc.keys() and doc["status"] == "new"
        text = (out / doc["text_file"]).read_text(encoding="utf-8")
        assert text.strip() and doc["sha256"]
    about = (out / docs[u(site, "/about/index.htm")]["text_file"]).read_text(encoding="utf-8")
    assert "东湖大学始建于1923年" in about and len(about.splitlines()) > 3
    assert docs[u(site, "/trap/gbk.htm")]["depth"] == 1
    assert docs[u(site, "/trap/gbk.htm")]["parent_url"] == u(site, "/trap/start.htm")


def test_session_and_tracking_links_fetch_the_page_once(site, trap_crawl):
    _out, _last, docs, _skipped, requests = trap_crawl
    assert not any("jsessionid" in r.path.lower() or "utm_" in r.path for r in requests)
    counts = Counter(r.path for r in requests)
    assert counts["/about/index.htm"] == 1 and counts["/canteen/index.htm"] == 1
    assert u(site, "/about/index.htm") in docs and u(site, "/canteen/index.htm") in docs
    assert len({d["sha256"] for d in docs.values()}) == len(docs)


def test_off_scope_host_long_urls_and_mailto_are_never_requested(site, trap_crawl):
    _out, _last, _docs, skipped, requests = trap_crawl
    assert not any(r.headers.get("Host", "").startswith("localhost") for r in requests)
    assert skipped[f"http://localhost:{site.port}/trap/offsite.htm"]["reason"] == "off-site"
    assert not any(r.path.startswith("/trap/long") for r in requests)
    assert not any("mailto" in r.path or "javascript" in r.path for r in requests)


def test_trap_budgets_stop_endless_calendars_and_pagers(site, trap_crawl):
    _out, _last, _docs, _skipped, requests = trap_crawl
    assert sum(r.path.startswith("/trap/calendar") for r in requests) <= 5
    assert sum(r.path.startswith("/trap/list") for r in requests) <= 5


def test_retry_after_is_honoured_and_slow_pages_time_out(site, trap_crawl):
    _out, last, docs, skipped, requests = trap_crawl
    assert [r.status for r in requests if r.path == "/trap/flaky.htm"] == [503, 200]
    assert site.too_early == 0  # the retry waited for Retry-After
    assert u(site, "/trap/flaky.htm") in docs
    assert skipped[u(site, "/trap/slow.htm")]["reason"] == "timeout"
    assert last.status == "done"


def test_media_is_skipped_without_downloading_and_attachments_become_text(site, trap_crawl):
    out, _last, docs, skipped, _requests = trap_crawl
    assert skipped[u(site, "/trap/media?id=1")]["reason"] == "media"
    assert site.bytes_sent["/trap/media"] < 0.2 * 50_000_000
    pdf = docs[u(site, "/trap/download.jsp?fileid=7")]
    assert pdf["kind"] == "pdf" and pdf["parent_url"] == u(site, "/trap/start.htm")
    assert "Registration closes on 1 April 2025" in (out / pdf["text_file"]).read_text(encoding="utf-8")
    docx = docs[u(site, "/trap/getfile?id=8")]
    assert docx["kind"] == "docx"
    assert "报名表请于3月25日前交至体育部105室" in (out / docx["text_file"]).read_text(encoding="utf-8")


def test_gbk_page_declared_gb2312_keeps_gbk_only_characters(site, trap_crawl):
    out, _last, docs, _skipped, _requests = trap_crawl
    doc = docs[u(site, "/trap/gbk.htm")]
    assert doc["encoding"] == "gb18030"
    assert "镕园3栋将于3月10日停水维修" in (out / doc["text_file"]).read_text(encoding="utf-8")


def test_error_pages_login_walls_empty_pages_and_duplicates_are_not_saved(site, trap_crawl):
    _out, _last, docs, skipped, _requests = trap_crawl
    expected = {
        "/trap/missing.htm": "http 404",
        "/portal/index.htm": "login wall",
        "/trap/empty.htm": "empty text",
        "/trap/loop1": "redirect loop",
        "/trap/copy.htm": "duplicate",
        "/trap/near.htm": "near-duplicate",
        "/old-library.htm": "duplicate",
    }
    for path, reason in expected.items():
        assert u(site, path) not in docs
        assert skipped[u(site, path)]["reason"] == reason, path
    # rel=canonical and meta refresh are followed; the news text is saved exactly once
    assert u(site, "/trap/target.htm") in docs and u(site, "/trap/refresh.htm") not in docs
    assert sum("自习室" in d["title"] for d in docs.values()) == 1


# ---------------------------------------------------------------- stop, resume and re-crawl


def test_stop_leaves_a_consistent_result_and_a_rerun_resumes(site, tmp_path):
    out = tmp_path / "crawl"
    options = CrawlOptions(max_depth=2, **FAST)
    seen = []
    for progress in crawl_site(site.url + "/index.htm", out, options):
        seen.append(progress.fetched)
        if progress.fetched >= 4:
            request_stop(out)
    assert progress.status == "stopped" and progress.fetched < 20
    first = read_manifest(out)
    assert first and all((out / d["text_file"]).is_file() for d in first)
    before = len(site.requests)
    last = list(crawl_site(site.url + "/index.htm", out, options))[-1]
    assert last.status == "done"
    again = Counter(r.path for r in site.requests[before:])
    assert not any(
        again[p] for p in ("/index.htm",) + tuple(d["url"].split(str(site.port))[1] for d in first)
    )
    docs = read_manifest(out)
    assert len({d["url"] for d in docs}) == len(docs) >= 18


def test_killed_crawl_resumes_without_duplicates(site, tmp_path):
    out = tmp_path / "crawl"
    cmd = [sys.executable, "-m", "blocks.crawl", site.url + "/index.htm", "--out", str(out), "--delay", "0.15",
           "--concurrency", "1", "--max-depth", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "state.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not state.is_file() or state.read_text().count('"url"') < 6):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {json.loads(line)["url"] for line in state.read_text().splitlines() if '"url"' in line}
    before = len(site.requests)
    result = subprocess.run(cmd[:6] + ["--delay", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    refetched = {site.url + r.path for r in site.requests[before:]}
    assert not refetched & done_before
    docs = read_manifest(out)
    assert len({d["url"] for d in docs}) == len(docs) >= 18
    assert len({d["id"] for d in docs}) == len(docs)


def test_recrawl_reuses_validators_and_marks_changed_and_vanished(site, tmp_path):
    out = tmp_path / "crawl"
    options = CrawlOptions(max_depth=1, **FAST)
    list(crawl_site(site.url + "/index.htm", out, options))
    first = {d["url"]: d for d in read_manifest(out)}
    site.overrides["/about/index.htm"] = (
        "<html><head><title>学校概况</title></head><body><h1>学校概况</h1>"
        "<p>东湖大学始建于1923年，2025年新增人工智能学院，现设有25个学院。</p></body></html>"
    )
    site.removed.add("/canteen/index.htm")
    before = len(site.requests)
    try:
        last = list(crawl_site(site.url + "/index.htm", out, options))[-1]
    finally:
        site.overrides.clear()
        site.removed.clear()
    docs = {d["url"]: d for d in read_manifest(out)}
    assert docs[u(site, "/about/index.htm")]["status"] == "changed"
    assert docs[u(site, "/about/index.htm")]["text_file"] == first[u(site, "/about/index.htm")]["text_file"]
    assert "25个学院" in (out / docs[u(site, "/about/index.htm")]["text_file"]).read_text(encoding="utf-8")
    assert docs[u(site, "/canteen/index.htm")]["status"] == "vanished"
    assert docs[u(site, "/library/index.htm")]["status"] == "unchanged"
    library = [r for r in site.requests[before:] if r.path == "/library/index.htm"]
    assert library[0].status == 304 and "If-None-Match" in library[0].headers
    assert last.unchanged >= 5 and last.changed == 1


def test_cli_help_and_bad_url_exit_code():
    help_text = subprocess.run(
        [sys.executable, "-m", "blocks.crawl", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    for flag in ("--out", "--max-depth", "--max-pages", "--delay", "--concurrency", "--user-agent"):
        assert flag in help_text.stdout
    bad = subprocess.run([sys.executable, "-m", "blocks.crawl", "nonsense", "--out", "/tmp/x-crawl"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "Malformed start URL" in bad.stderr and "Traceback" not in bad.stderr


def _convert(body: bytes, kind: str = "html"):
    from blocks.crawl import Outcome, Task, convert_body

    outcome = Outcome(
        task=Task("http://example.edu/x.htm", 1, None), final_url="http://example.edu/x.htm", kind=kind
    )
    convert_body(outcome, body, "", None)
    return outcome


def test_pdf_bytes_served_as_html_take_the_pdf_path_and_images_are_skipped():
    from blocks.demo_site import build_pdf

    outcome = _convert(build_pdf(["Registration closes on 1 April 2025 at the Sports Office, Room 105."]))
    assert outcome.kind == "pdf" and outcome.reason is None
    assert "Registration closes on 1 April 2025" in outcome.text and "%PDF" not in outcome.text
    image = _convert(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert image.reason == "media" and image.text == ""


def test_soft_404_and_template_only_pages_are_skipped_with_a_reason_but_short_notices_are_kept():
    missing = "<html><head><title>提示</title></head><body><div class='main'><p>对不起，您访问的页面不存在！</p></div></body></html>"
    assert _convert(missing.encode()).reason == "soft 404"
    english = "<html><head><title>Page not found | Example University</title></head><body><p>Sorry.</p></body></html>"
    assert _convert(english.encode()).reason == "soft 404"
    calendar = "<html><body><h1>Events calendar</h1><div class='events'><p>No events scheduled.</p></div></body></html>"
    assert _convert(calendar.encode()).reason == "no content"
    notice = (
        "<html><head><title>停电通知</title></head><body><div id='top'><h1>停电通知</h1>"
        "<p>5月24日8:00至12:00，桂园1至3栋停电，请提前做好准备。</p></div></body></html>"
    )
    kept = _convert(notice.encode())
    assert kept.reason is None and "桂园1至3栋停电" in kept.text
