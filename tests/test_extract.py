"""Main-text extraction: charsets, CMS furniture, titles and paragraphs."""

from __future__ import annotations

from pathlib import Path

from blocks.extract import decode_html, extract_main_text, read_html

SITE = Path(__file__).resolve().parent.parent / "assets" / "demo_site"


def test_decode_never_forces_utf8_and_widens_gb2312():
    html = '<meta charset="gb2312"><p>朱镕基同志视察镕园</p>'  # 镕 is in GBK, not in GB2312
    text, encoding = decode_html(html.encode("gbk"))
    assert "镕园" in text and encoding == "gb18030"
    text, encoding = decode_html("<p>东湖大学</p>".encode())
    assert text == "<p>东湖大学</p>" and encoding == "utf-8"
    # a wrong declaration (utf-8 bytes labelled gbk) is ignored because strict UTF-8 comes first
    text, _ = decode_html('<meta charset="gbk"><p>图书馆开放时间</p>'.encode())
    assert "图书馆开放时间" in text
    # no declaration at all: the detector decides
    body = (
        "<html><body><p>" + "东湖大学图书馆开放时间为每天七点半到晚上十点半。" * 5 + "</p></body></html>"
    ).encode("gbk")
    text, encoding = decode_html(body)
    assert "图书馆开放时间" in text and encoding in ("gb18030", "gbk", "gb2312")


def test_declared_header_charset_that_does_not_decode_is_not_trusted():
    body = "<p>东湖大学校训：明德、笃学、求实、致远。东湖大学坐落于武汉东湖之滨。</p>".encode("gb18030")
    text, encoding = decode_html(body, declared="shift_jis")
    assert "明德、笃学" in text


def test_cms_furniture_is_removed_and_content_kept():
    page = (SITE / "info" / "1021" / "3456.htm").read_bytes()
    text = extract_main_text(page, "http://www.elu.edu.cn/info/1021/3456.htm")
    lines = text.splitlines()
    assert lines[0] == "关于2024年国庆节放假安排的通知"  # title first
    assert "值班电话：027-87650110（保卫处，24小时）。" in lines  # contact line kept
    assert any(line.startswith("10月1日（星期二）至7日") for line in lines)  # paragraphs stay lines
    for junk in ("上一篇", "下一篇", "打印", "关闭", "浏览次数", "Cookie", "版权所有", "友情链接", "首页"):
        assert junk not in text, junk


def test_gbk_demo_page_title_tables_and_english_page():
    housing = read_html((SITE / "housing" / "index.htm").read_bytes())
    assert housing.encoding == "gb18030" and housing.title == "学生公寓住宿指南"
    assert "镕园服务中心电话027-87651350" in housing.text
    library = extract_main_text((SITE / "library" / "index.htm").read_bytes())
    assert "借阅区开放时间为每天7:30-22:30" in library
    english = extract_main_text((SITE / "en" / "index.htm").read_bytes())
    assert english.startswith("About Eastlake University")
    assert "founded in 1923" in english and "Copyright" not in english


def test_links_canonical_refresh_and_login_form_are_reported():
    html = (
        b'<html><head><link rel="canonical" href="/a.htm"><meta http-equiv="refresh" content="0; url=/b.htm">'
        b'</head><body><a href="/c.htm">c</a><form><input type="password"></form></body></html>'
    )
    page = read_html(html)
    assert page.canonical == "/a.htm" and page.refresh == "/b.htm" and page.links == ["/c.htm"]
    assert page.has_login_form


def test_empty_and_binary_input_give_empty_text():
    assert extract_main_text(b"") == ""
    assert extract_main_text(b"<html><body><div class='nav'>menu</div></body></html>") == ""
    assert isinstance(extract_main_text(bytes(range(256)) * 4), str)
