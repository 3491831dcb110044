"""The real app in headless Chromium: eight tabs click through, the language switch works, login holds."""

from __future__ import annotations

import pytest
from browser import ARTIFACTS, browser_page, running_app

import app

pytestmark = pytest.mark.browser


def test_click_through_the_eight_tabs_and_switch_language(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(data) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="1 Crawl").wait_for(timeout=60_000)
        for _module, en, _zh in app.TABS:
            page.get_by_role("tab", name=en).click()
            assert page.get_by_role("tab", name=en).get_attribute("aria-selected") == "true"
        page.screenshot(path=str(ARTIFACTS / "app-tabs-en.png"), full_page=True)

        page.get_by_label("中文").check()
        page.get_by_role("tab", name="1 爬取").wait_for(timeout=20_000)
        for _module, _en, zh in app.TABS:
            page.get_by_role("tab", name=zh).click()
        page.screenshot(path=str(ARTIFACTS / "app-tabs-zh.png"), full_page=True)
        assert page.get_by_role("tab", name="1 Crawl").count() == 0


def test_exposed_app_is_guarded_by_login(tmp_path):
    """Bound to all interfaces (as behind AutoDL's tunnel) with the login from the environment."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"UMTCDS_AUTH": "admin:campus-secret"}
    with running_app(data, "--host", "0.0.0.0", env=env) as url, browser_page() as page:
        page.goto(url)
        page.get_by_label("username").fill("admin")
        page.get_by_label("password").fill("wrong-password")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=20_000)
        assert page.get_by_role("tab", name="1 Crawl").count() == 0
        page.get_by_label("username").fill("admin")
        page.get_by_label("password").fill("campus-secret")
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="1 Crawl").wait_for(timeout=60_000)
