"""The Crawl tab in headless Chromium: crawl the embedded demo site and see the saved pages."""

from __future__ import annotations

import json
import re

import pytest
from browser import ARTIFACTS, browser_page, running_app

pytestmark = pytest.mark.browser


def test_crawl_tab_crawls_the_demo_site(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(data) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="1 Crawl").wait_for(timeout=60_000)
        page.get_by_role("tab", name="1 Crawl").click()

        page.get_by_role("button", name="Try the demo site").click()
        start_url = page.get_by_label("Start URL")
        page.wait_for_function(
            "el => el.value.startsWith('http://127.0.0.1:')", arg=start_url.element_handle(), timeout=20_000
        )
        assert start_url.input_value().endswith("/index.htm")

        page.get_by_role("button", name="Start crawl").click()
        finished = page.get_by_text(re.compile(r"done · fetched \d+ · saved \d+")).first
        finished.wait_for(timeout=60_000)
        saved = int(re.search(r"saved (\d+)", finished.inner_text()).group(1))
        assert saved >= 10, finished.inner_text()

        table = page.locator("table").filter(has_text="关于2024年国庆节放假安排的通知")
        table.first.wait_for(timeout=20_000)
        for title in ("学生公寓住宿指南", "About Eastlake University"):
            assert page.locator("table").filter(has_text=title).count() >= 1, title
        page.screenshot(path=str(ARTIFACTS / "crawl-demo-site.png"), full_page=True)

    manifest = data / "demo" / "crawl" / "pages.jsonl"
    assert manifest.exists()
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(records) == saved
    assert any(r["title"] == "关于2024年国庆节放假安排的通知" for r in records)
    assert all(r["url"].startswith("http://127.0.0.1:") for r in records)
