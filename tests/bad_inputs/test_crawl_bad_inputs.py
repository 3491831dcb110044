"""Crawl stage bad input: every refusal is a clear message from the CLI (exit 2) and from crawl_site
(CrawlError), and a failed rerun into a folder that already holds a crawl leaves it untouched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks.crawl import CrawlError, CrawlOptions, crawl_site, read_manifest, read_skipped

FAST = {"delay": 0, "concurrency": 2, "read_timeout": 3, "retries": 0, "backoff": 0.05}


@pytest.fixture(scope="module")
def site():
    from faults.hostile_site import start_hostile_site

    server = start_hostile_site()
    server.start_links = ["/good/1.htm", "/good/2.htm"]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def earlier_crawl(site, tmp_path_factory) -> Path:
    """A finished crawl of three pages: the work a failed rerun must not destroy."""
    out = tmp_path_factory.mktemp("earlier") / "crawl"
    list(crawl_site(site.url + "/start.htm", out, CrawlOptions(**FAST)))
    assert len(read_manifest(out)) == 3
    return out


# (case id, start URL; "{site}" is the hostile site's origin, words the message must contain)
REFUSED_START_URLS = [
    ("words", "not a url", ["Malformed start URL"]),
    ("ftp", "ftp://www.example.edu.cn/", ["Malformed start URL", "http or https"]),
    ("scheme-only", "http://", ["Malformed start URL"]),
    ("broken-ipv6", "http://[::1/", ["Malformed start URL"]),
    ("port-out-of-range", "http://www.example.edu.cn:99999/", ["Malformed start URL"]),
    ("javascript", "javascript:alert(1)", ["Malformed start URL"]),
    ("empty", "", ["Malformed start URL"]),
    ("closed-port", "http://127.0.0.1:9/", ["Cannot reach", "Check the address"]),
    ("unresolvable", "http://no-such-host.invalid/", ["Cannot reach"]),
    ("start-404", "{site}/no-such-page.htm", ["http 404", "does not exist"]),
    ("json-start", "{site}/plain.txt", ["unsupported type", "must be an HTML page"]),
    ("image-start", "{site}/image.png", ["media", "must be an HTML page"]),
    ("binary-html", "{site}/binary.htm", ["binary content"]),
    ("nul-html", "{site}/nul.htm", ["binary content"]),
    ("huge-declared", "{site}/huge-declared.htm", ["too large"]),
    ("huge-streamed", "{site}/huge-streamed.htm", ["too large"]),
    ("redirect-to-itself", "{site}/loop", ["redirect loop"]),
    ("redirect-loop", "{site}/loop-a", ["redirect loop"]),
    ("truncated-start", "{site}/truncated.htm", ["truncated body"]),
]


def _place_earlier(earlier: Path, out: Path) -> dict[str, bytes]:
    shutil.copytree(earlier, out)
    return snapshot(out)


@pytest.mark.parametrize("case,url,words", REFUSED_START_URLS, ids=[c[0] for c in REFUSED_START_URLS])
def test_bad_start_url_is_refused_and_earlier_crawl_kept(case, url, words, site, earlier_crawl, tmp_path):
    url = url.format(site=site.url)
    cli_out, fn_out = tmp_path / "cli", tmp_path / "fn"
    before = _place_earlier(earlier_crawl, cli_out)
    _place_earlier(earlier_crawl, fn_out)

    proc = run_cli(["-m", "blocks.crawl", url, "--out", str(cli_out), "--delay", "0"])
    assert_refused(proc, *words)

    with pytest.raises(CrawlError) as caught:
        list(crawl_site(url, fn_out, CrawlOptions(**FAST)))
    for word in words:
        assert word.lower() in str(caught.value).lower()

    for out in (cli_out, fn_out):
        after = snapshot(out)
        for name in ("pages.jsonl", "skipped.jsonl") + tuple(n for n in before if n.startswith("pages/")):
            assert after[name] == before[name], f"{name} changed in {out.name}"
        assert not [n for n in after if n.endswith(".tmp")]


BAD_OPTIONS = [
    ("concurrency-0", ["--concurrency", "0"], {"concurrency": 0}, "concurrency must be between 1 and 32"),
    ("max-pages-0", ["--max-pages", "0"], {"max_pages": 0}, "max pages must be at least 1"),
    ("negative-delay", ["--delay", "-1"], {"delay": -1}, "delay must be 0 seconds or more"),
    ("negative-depth", ["--max-depth", "-2"], {"max_depth": -2}, "max depth must be 0 or more"),
    ("blank-user-agent", ["--user-agent", "  "], {"user_agent": " "}, "user agent must not be empty"),
]


@pytest.mark.parametrize("case,flags,fields,message", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_crawl_settings_name_the_field(case, flags, fields, message, site, tmp_path):
    proc = run_cli(["-m", "blocks.crawl", site.url + "/start.htm", "--out", str(tmp_path / "o"), *flags])
    assert_refused(proc, "Invalid crawl settings", message)
    with pytest.raises(CrawlError, match=message):
        crawl_site(site.url + "/start.htm", tmp_path / "o", CrawlOptions(**fields))
    assert not (tmp_path / "o").exists()  # refused before anything was created


def _read_only_dir(tmp_path: Path):
    """A read-only tmpfs (root can write anywhere else); None where mounting is not allowed."""
    target = tmp_path / "ro"
    target.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)], capture_output=True
    )
    return target if proc.returncode == 0 else None


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file", "read-only"])
def test_output_folder_that_cannot_be_written(where, site, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    mounted = None
    if where == "under-a-file":
        out = blocker / "crawl"
    elif where == "is-a-file":
        out = blocker
    else:
        mounted = _read_only_dir(tmp_path)
        if mounted is None:
            pytest.skip("mount is not permitted here")
        out = mounted / "crawl"
    try:
        proc = run_cli(["-m", "blocks.crawl", site.url + "/start.htm", "--out", str(out)])
        assert_refused(proc, "Cannot write to", "Choose a folder you can write to")
        with pytest.raises(CrawlError, match="Cannot write to"):
            crawl_site(site.url + "/start.htm", out, CrawlOptions(**FAST))
        assert blocker.read_text() == "not a folder"
    finally:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=True)


def test_garbage_robots_and_bad_charsets_do_not_stop_the_crawl(site, tmp_path):
    """Unparseable robots.txt means no rules; unknown or lying charsets are decoded the browser's way."""
    site.robots = bytes(range(256)) * 8 + b"\nDisallow /x\n:::\nUser-agent\n"
    site.start_links = ["/good/1.htm", "/badcharset.htm", "/badmeta.htm", "/invalid-utf8.htm"]
    try:
        proc = run_cli(
            ["-m", "blocks.crawl", site.url + "/start.htm", "--out", str(tmp_path / "c"), "--delay", "0"]
        )
        assert proc.returncode == 0, proc.stderr
        fn_last = list(crawl_site(site.url + "/start.htm", tmp_path / "f", CrawlOptions(**FAST)))[-1]
    finally:
        site.robots = b"User-agent: *\nAllow: /\n"
        site.start_links = ["/good/1.htm", "/good/2.htm"]
    assert fn_last.status == "done"
    for out in (tmp_path / "c", tmp_path / "f"):
        docs = {d["url"].rsplit("/", 1)[1]: d for d in read_manifest(out)}
        assert {"badcharset.htm", "badmeta.htm", "invalid-utf8.htm"} <= docs.keys()
        text = (out / docs["badcharset.htm"]["text_file"]).read_text(encoding="utf-8")
        assert "东湖大学第902号通知" in text
        assert docs["invalid-utf8.htm"]["encoding"] == "utf-8-lossy"
        assert read_skipped(out) == []
