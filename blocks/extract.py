"""Main-text extraction for campus pages: charset decoding, CMS furniture removal, trafilatura, clean-up.

    python -m blocks.extract PAGE.html [--url URL]     # print the title and main text of a saved page

Pipeline: decode (never forcing UTF-8), drop furniture by tag/class, turn layout tables into divs,
then take a known CMS article body (VSB/博达 v_news_content, WebPlus wp_articlecontent, TRS_Editor)
whole if the page has one, else run trafilatura (falling back to the cleaned block text), and finally
drop furniture lines (上一篇/下一篇, 打印/关闭, counters, bylines, copyright). Quality is measured by
benchmarks/extraction_quality.py.

`extract_main_text(html_bytes, url)` is the pure function the crawler, tests and benchmarks call;
`read_html` returns the same text plus what the crawler needs from one parse (title, links,
canonical, meta refresh, login form, encoding used).
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Declared charsets that browsers (WHATWG Encoding) decode with a superset; GBK-only characters such
# as 镕 are common on sites that still declare gb2312.
WIDER_CHARSET = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "big5": "big5hkscs",
    "iso-8859-1": "cp1252",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.IGNORECASE)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)

# Elements that are never content.
_DROP_TAGS = ("script", "style", "noscript", "iframe", "select", "input", "textarea", "template", "svg",
              "link", "meta")  # fmt: skip
# Elements that are page furniture by their tag, unless they hold most of the page's text.
_FURNITURE_TAGS = ("nav", "header", "footer", "aside", "menu")
# class/id words that name furniture on campus CMSs (VSB/Webplus/TRS/WordPress) and common themes.
# A class or id is split into words at "-", "_" and camelCase; `_FURNITURE_PART` words mark furniture
# wherever they appear ("cookie-banner", "main-nav"), `_FURNITURE_WHOLE` only as the whole name: "top"
# and "next" are furniture as `id="top"`/`class="next"` but not in "margin-top" or `id="__next"`, and a
# wrapper is never judged by its words alone (see _remove_furniture).
_FURNITURE_PART = {
    "nav", "navbar", "navigation", "menu", "submenu", "megamenu", "breadcrumb", "breadcrumbs", "crumb",
    "crumbs", "sidebar", "footer", "copyright", "cookie", "cookies", "consent", "gdpr", "share", "sharing",
    "social", "toolbar", "pagination", "pager", "friendlink", "newsletter", "subscribe", "qrcode",
    "related", "relate", "advert", "ads", "skip", "prevnext", "comments", "lm",
}  # fmt: skip
_FURNITURE_WHOLE = {
    "header", "head", "banner", "top", "topbar", "top-bar", "side", "aside", "leftside", "rightside",
    "leftbox", "foot", "bottom", "links", "tools", "print", "prev", "next", "pre_next", "search", "login",
    "location", "position", "ewm", "xgxw", "fenxiang", "pb_sys_common", "feedback", "alert",
}  # fmt: skip
# A leading word that negates the rest: `no-sidebar`, `has-sidebar` are page-layout flags on <body>.
_FLAG_PREFIX = {"no", "has", "with", "without", "hide", "show", "is"}
_WORD_SPLIT = re.compile(r"[-_\s]+|(?<=[a-z])(?=[A-Z])")
# Tokens that mark the article itself: never drop these even if they also look like furniture.
_CONTENT_RE = re.compile(r"content|article|arti|news|main|text|detail|zhengwen|vsb|wp_art|post|entry", re.I)
# An element holding at least this share of the page's text is the page, whatever it is called.
_MAIN_SHARE = 0.4
_MAIN_MIN_CHARS = 20  # the crawler keeps a page from 20 characters of text

# Lines that are CMS furniture in Chinese and English page templates.
_FURNITURE_LINE = re.compile(
    r"^\s*(?:上一篇|下一篇|上一条|下一条|上一页|下一页|previous|next|prev)\s*[:：]"
    r"|^\s*(?:【?\s*(?:打印|关闭|关闭窗口|打印本页|分享|收藏|返回顶部|返回|字号|大|中|小)\s*】?\s*)+$"
    r"|^\s*(?:当前位置|您的位置|你的位置|现在位置|位置)\s*[:：]"
    r"|^\s*(?:print|close|share|back to top|close window|was this page helpful\??)\s*$"
    r"|^\s*last (?:updated|modified)\s*:"
    r"|版权所有|copyright\s*(?:©|\(c\)|\d{4})|©\s*\d{4}|all rights reserved|ICP备|公网安备",
    re.IGNORECASE,
)
_COUNTER = re.compile(
    r"(?:浏览次数|点击次数|阅读次数|访问次数|浏览量|点击数|阅读量)\s*[:：]?\s*\d*\s*次?"
    r"|已下载\s*\d*\s*次"
    # English only as a labelled counter: "views" inside "overview"/"reviews" is prose.
    r"|\b(?:page\s+)?(?:views?|hits|clicks?)\s*[:：]\s*\d*",
    re.I,
)
# "点击：12" / "浏览：[34]次" without the word 次数: only with a colon, and only on a byline (a date on
# the line) or with 次, so prose such as "点击下方链接" stays.
_SHORT_COUNTER = re.compile(r"(?:点击|浏览|阅读|访问)\s*[:：]\s*\[?\s*\d*\s*\]?\s*次?")
_DATE = re.compile(r"\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}")
# Article metadata labels; a short line with two or more of them is the byline, not content.
_META_LABEL = re.compile(
    r"(?:发布时间|发布日期|发表时间|更新时间|来源|作者|编辑|责任编辑|发布者|发布人|责任部门)\s*[:：]"
)
_BRACKET_TOOLS = re.compile(r"【\s*(?:打印|关闭|关闭窗口|分享|收藏|大|中|小)\s*】")
_TITLE_SPLIT = re.compile(r"\s*(?:--|——|-|_|\||｜|—)\s*")
# Known article-body containers of Chinese campus CMSs (VSB/博达, WebPlus, TRS). When one holds the
# text, it is the article: taking it whole keeps short notices and signature lines that a generic
# extractor drops as boilerplate.
_CMS_BODY_XPATH = (
    "//div[contains(concat(' ', normalize-space(@class), ' '), ' v_news_content ')]"
    " | //div[starts-with(@id, 'vsb_content')][not(.//div[@class='v_news_content'])]"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' wp_articlecontent ')]"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' TRS_Editor ')]"
)
# Separators between menu links ("首页 | 概况 · 师资"): a block with only these besides its links is a menu.
_MENU_GLUE = re.compile(r"^[\s|｜·•/\\>»›\-–—、,，:：\[\]【】()（）]*$")
_WORD_CHAR = re.compile(r"[^\W_]")
_LAYOUT_INNER = ("table", "form", "div", "ul", "ol", "h1", "h2", "h3", "h4")
_HEADING_TAGS = ("a", "h1", "h2", "h3", "h4", "h5", "h6", "body", "html")
_BLOCK_TAGS = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "br", "table", "section",
               "article", "blockquote", "pre", "dd", "dt", "dl", "ul", "ol", "td", "th", "main", "form",
               "figure", "figcaption", "header", "footer", "nav", "aside", "address", "fieldset", "hr",
               "center", "details", "summary", "caption", "body", "html"}  # fmt: skip
# Tokens for the density measures: one per CJK character, one per run of letters/digits otherwise.
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+")


@dataclass
class HtmlPage:
    """What one parse of an HTML document gives the crawler."""

    text: str
    title: str
    encoding: str
    links: list[str] = field(default_factory=list)  # raw href values, in document order
    canonical: str | None = None
    refresh: str | None = None  # target of <meta http-equiv=refresh>
    has_login_form: bool = False


def normalize_charset(name: str | None) -> str | None:
    """A Python codec name for a declared charset (widened to its browser superset), or None if unknown."""
    if not name:
        return None
    name = name.strip().strip("\"'").lower()
    name = WIDER_CHARSET.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def sniff_meta_charset(body: bytes) -> str | None:
    """The charset a page declares in its first 4 KB (<meta charset> or http-equiv content type)."""
    match = _META_CHARSET.search(body[:4096])
    return match.group(1).decode("ascii", "replace") if match else None


def decode_html(body: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode page bytes: BOM, strict UTF-8, the declared charset (a stray byte replaced), then a guess.

    `declared` is the HTTP header's charset; the page's own meta tag is tried after it. A declared
    charset is kept unless it leaves more than a few undecodable bytes (then it is wrong, not a typo).
    Returns (text, encoding used).
    """
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", "replace"), "utf-8-sig"
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    high = sum(1 for b in body[:200_000] if b >= 0x80) or 1
    for candidate in (declared, sniff_meta_charset(body)):
        codec = normalize_charset(candidate)
        if not codec:
            continue
        text = body.decode(codec, "replace")
        # One stray byte in a gb2312 page must not throw the whole page to a guesser.
        if text.count("\ufffd") <= max(2, high // 200):
            return text, codec
    lossy = body.decode("utf-8", "replace")
    if lossy.count("\ufffd") <= max(2, high // 200):  # UTF-8 with a stray byte
        return lossy, "utf-8"
    if _looks_gbk(body):
        return body.decode("gb18030", "replace"), "gb18030"
    from charset_normalizer import from_bytes

    best = from_bytes(body[:200_000]).best()
    if best is not None and best.encoding:
        codec = normalize_charset(best.encoding) or best.encoding
        return body.decode(codec, "replace"), codec
    # Undecodable by any guess: keep what is readable and say so in the recorded encoding.
    return body.decode("utf-8", "replace"), "utf-8-lossy"


def _looks_gbk(body: bytes) -> bool:
    """True when the non-ASCII bytes are mostly GB2312 pairs (both bytes 0xA1-0xFE): undeclared Chinese.

    Latin-1 text also decodes as GB18030, but its accented letters sit between ASCII bytes.
    """
    pairs = re.findall(rb"[\xa1-\xfe]{2}", body[:200_000])
    high = sum(1 for b in body[:200_000] if b >= 0x80)
    return len(pairs) >= 10 and 2 * len(pairs) >= 0.9 * high


def _class_tokens(element) -> list[str]:
    return f"{element.get('class') or ''} {element.get('id') or ''}".split()


def _is_furniture_name(element) -> bool:
    """True for a class/id that names navigation, a sidebar, footer, banner or tool bar."""
    tokens = _class_tokens(element)
    if not tokens:
        return False
    if any(_CONTENT_RE.search(t) for t in tokens) and not any(t.lower().startswith("cookie") for t in tokens):
        return False
    for token in tokens:
        if token.lower() in _FURNITURE_WHOLE:
            return True
        words = [w.lower() for w in _WORD_SPLIT.split(token) if w]
        if words and words[0] in _FLAG_PREFIX:
            continue
        if any(w in _FURNITURE_PART for w in words):
            return True
    return False


def _parse_tree(text: str):
    import lxml.html

    # lxml refuses str input that carries an XML encoding declaration.
    text = _XML_DECL.sub("", text, count=1)
    if not text.strip():
        return None
    try:
        return lxml.html.document_fromstring(text)
    except Exception as exc:  # lxml raises ParserError/XMLSyntaxError for non-HTML bytes
        if exc.__class__.__name__ in ("ParserError", "XMLSyntaxError"):
            return None
        raise


def _page_title(tree) -> str:
    """The article heading if there is one h1, else <title> without the site-name suffix."""
    h1 = [" ".join(h.text_content().split()) for h in tree.iter("h1")]
    h1 = [h for h in h1 if h]
    title_el = tree.find(".//title")
    title = " ".join(title_el.text_content().split()) if title_el is not None else ""
    if len(h1) == 1 and (not title or h1[0] in title or len(h1[0]) >= 4):
        return h1[0]
    if title:
        parts = [p for p in _TITLE_SPLIT.split(title) if p]
        # "Article - Office - University": the longest part is the article name.
        return max(parts, key=len) if parts else title
    return h1[0] if h1 else ""


def _text_sizes(root) -> dict:
    """Characters of text (whitespace excluded) under each element, in one pass."""
    sizes: dict = {}

    def walk(el) -> int:
        n = len("".join(el.text.split())) if el.text and isinstance(el.tag, str) else 0
        for child in el:
            n += walk(child)
            if child.tail:
                n += len("".join(child.tail.split()))
        sizes[el] = n
        return n

    walk(root)
    return sizes


def _holds_page(size: int, total: int) -> bool:
    """True for an element with most of a page's text (a page of a few menu words has no such element)."""
    return size >= _MAIN_SHARE * total and size >= _MAIN_MIN_CHARS


def _remove_furniture(tree) -> None:
    """Drop scripts, navigation, sidebars, footers, cookie banners and CMS tool bars in place.

    Furniture is judged by tag or class/id name, but an element that holds most of the page's text
    (a `<header>` or `id="top"` wrapped around the whole page) is kept: its furniture is judged inside.
    """
    import lxml.etree

    # Accordion questions (FAQ pages) live in buttons, and some themes wrap a whole menu or page in one:
    # keep the text of a button under a heading or with a paragraph's worth of text, drop the rest.
    for button in list(tree.iter("button")):
        parent = button.getparent()
        if parent is None:
            continue
        if parent.tag in ("dt", "summary", "h2", "h3", "h4", "h5") or len(button.text_content()) > 80:
            button.drop_tag()
        else:
            button.drop_tree()

    for element in list(tree.iter(*_DROP_TAGS, lxml.etree.Comment, lxml.etree.ProcessingInstruction)):
        if element.getparent() is not None:
            element.drop_tree()
    body = tree.find("body")
    root = body if body is not None else tree
    sizes = _text_sizes(root)
    total = sizes.get(root, 0) or 1
    for element in list(root.iter()):
        if not isinstance(element.tag, str) or element.getparent() is None or element is root:
            continue
        named = element.tag not in _HEADING_TAGS and _is_furniture_name(element)
        if (_is_furniture_tag(element) or named) and not _holds_page(sizes.get(element, 0), total):
            element.drop_tree()


def _is_furniture_tag(element) -> bool:
    """True for nav/header/footer/aside/menu, except a <header> of an article or of the main element.

    HTML scopes a header to its nearest sectioning ancestor: inside <article> or <main> it holds that
    item's heading and summary (every card of a news river has one), not the site's banner.
    """
    if element.tag not in _FURNITURE_TAGS:
        return False
    return element.tag != "header" or next(element.iterancestors("article", "main"), None) is None


def _is_layout_table(table) -> bool:
    """True for a table used for page layout (nested tables, forms, divs, lists, or one column)."""
    if next(table.iterdescendants(*_LAYOUT_INNER), None) is not None:
        return True
    rows = list(table.iter("tr"))
    return bool(rows) and all(len(row.findall("td")) + len(row.findall("th")) <= 1 for row in rows)


def _unwrap_layout_tables(tree) -> None:
    """Turn layout tables into divs so that extractors see paragraphs, not one giant table cell."""
    for table in [t for t in tree.iter("table") if _is_layout_table(t)]:
        # Only this table's own rows and cells: nested data tables are judged on their own.
        parts = [e for e in table.iter("tbody", "thead", "tfoot", "tr", "td", "th")
                 if next(e.iterancestors("table"), None) is table]  # fmt: skip
        for element in (table, *parts):
            element.tag = "div"


def _is_menu(element) -> bool:
    """True for a block of three or more short links joined only by separators (an unlabelled nav bar)."""
    links = [" ".join(a.text_content().split()) for a in element.iter("a")]
    if len(links) < 3 or any(len(text) > 12 for text in links):
        return False
    rest = element.text_content()
    for text in links:
        rest = rest.replace(text, "", 1)
    return bool(_MENU_GLUE.match(rest))


def _remove_menus(tree) -> None:
    """Drop unlabelled navigation bars (old table-layout sites carry no class names to go by)."""
    for element in list(tree.iter("div", "td", "p", "ul", "ol", "span")):
        if element.getparent() is not None and _is_menu(element):
            element.drop_tree()


def _cms_body(tree):
    """The CMS article-body container if the page has one with real text, else None."""
    for element in tree.xpath(_CMS_BODY_XPATH):
        if len("".join(element.text_content().split())) >= 20:
            return element
    return None


@dataclass
class Line:
    """One paragraph of a cleaned page: its text and how many of its words are link labels."""

    text: str
    words: int
    link_words: int


def block_lines(root) -> tuple[list[Line], dict]:
    """The paragraphs of a cleaned tree (one per block element) and each block element's line range."""
    lines: list[Line] = []
    spans: dict = {}
    buffer: list[tuple[str, bool]] = []

    def flush() -> None:
        text = " ".join("".join(t for t, _ in buffer).split())
        if text:
            words = len(_WORD.findall(text))
            link_words = len(_WORD.findall(" ".join(t for t, in_link in buffer if in_link)))
            lines.append(Line(text, words, min(words, link_words)))
        buffer.clear()

    def walk(el, in_link: bool) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        in_link = in_link or tag == "a"
        block = tag in _BLOCK_TAGS
        if block:
            flush()
            start = len(lines)
        if el.text and tag:
            buffer.append((el.text, in_link))
        for child in el:
            walk(child, in_link)
            if child.tail:
                buffer.append((child.tail, in_link))
        if block:
            flush()
            spans[el] = (start, len(lines))

    walk(root, False)
    flush()
    return lines, spans


def line_weight(line: Line) -> float:
    """How much a paragraph looks like content: its plain words, less its link words and a per-line cost."""
    return (line.words - line.link_words) - LINK_COST * line.link_words - LINE_COST


# Weights of the density measure: a link word counts against a block as much as a plain word for it,
# and every line costs a few words (menus and footers are many short lines).
LINK_COST = 1.0
LINE_COST = 3.0
# A block of at least this size (text_size: words, 2.5 CJK characters each) is a paragraph of prose.
_PROSE_MIN_SIZE = 40
# A post (a blog entry, a thread's opening message) has a body this large; a card or teaser does not.
_POST_MIN_SIZE = 100


def densest_block(lines: list[Line], spans: dict) -> tuple[int, int]:
    """The line range of the block element whose paragraphs weigh most (plain text minus link text).

    A maximum-weight subtree: the article's container beats the page (which adds menus and footers,
    negative) and beats any one paragraph of it (which leaves the rest of the article out).
    """
    prefix = [0.0]
    for line in lines:
        prefix.append(prefix[-1] + line_weight(line))
    best, best_span = float("-inf"), (0, len(lines))
    for start, end in spans.values():
        score = prefix[end] - prefix[start]
        if score > best:
            best, best_span = score, (start, end)
    return best_span


def _block_text(root) -> str:
    """Plain text of a cleaned tree with one block element per line."""
    return "\n".join(line.text for line in block_lines(root)[0])


def clean_lines(text: str, title: str = "") -> str:
    """Remove CMS furniture lines and view counters, collapse blanks and repeats; title goes first."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = _BRACKET_TOOLS.sub("", raw)
        if len(_META_LABEL.findall(line)) >= 2 and len(line) < 160:
            continue
        line = _COUNTER.sub("", line)
        if _DATE.search(line):
            line = _SHORT_COUNTER.sub("", line)
        else:
            line = _SHORT_COUNTER.sub(lambda m: "" if m.group().endswith("次") else m.group(), line)
        line = " ".join(line.split())
        if not _WORD_CHAR.search(line) or _FURNITURE_LINE.search(line) or line in seen:
            continue
        seen.add(line)
        out.append(line)
    if title and not any(title in line for line in out[:3]):
        out.insert(0, title)
    return "\n".join(out)


def _main_text(tree, url: str | None) -> str:
    """The main text of a cleaned page: our densest block, reconciled with trafilatura's choice."""
    import trafilatura

    # Only outside a CMS body: inside one, a list of short links is content (a service index).
    _remove_menus(tree)
    body_el = tree.find("body")
    root = body_el if body_el is not None else tree
    lines, spans = block_lines(root)
    start, end = densest_block(lines, spans)
    # fast=True: our densest block plays the part of trafilatura's slower fallback extractors.
    picked = trafilatura.extract(
        tree, url=url, fast=True, include_comments=False, include_tables=True, deduplicate=False
    )
    dense = lines[start:end]
    item = _picked_post(lines, spans, (start, end), picked or "")
    if item is not None:
        # A blog's archive or a thread of posts: trafilatura took one post, the others are not this page's.
        picked_text = "\n".join(" ".join(line.split()) for line in (picked or "").splitlines())
        dense = [line for i, line in enumerate(lines[start:end], start)
                 if item[0] <= i < item[1] or line.text in picked_text]  # fmt: skip
    return reconcile(dense, picked or "", lines)


def _shape(element) -> tuple:
    """An element's tag, class and its children's: items of one template list share it."""
    children = tuple((c.tag, c.get("class")) for c in element if isinstance(c.tag, str))
    return element.tag, element.get("class"), children


def _is_long(line: Line) -> bool:
    """True for a paragraph that reconcile keeps even where trafilatura left it out."""
    return text_size(line.text) >= 12 and line.link_words <= 0.3 * line.words


def _picked_post(lines: list[Line], spans: dict, dense: tuple[int, int], picked: str):
    """The line range of the list item (a post) holding trafilatura's text, if it picked one of several.

    Trafilatura took (at least 100 words of) the first of several siblings of one shape, and at least
    two of the others have a paragraph of their own: the page lists whole posts (a blog's archive),
    and its own text is the first. Cards and teasers are shorter than a post and are left alone.
    """
    start, end = dense
    picked_text = "\n".join(" ".join(line.split()) for line in picked.splitlines() if line.strip())
    matched = [0.0]
    for line in lines:
        matched.append(matched[-1] + (text_size(line.text) if line.text in picked_text else 0.0))
    total = matched[end] - matched[start]
    if total < _POST_MIN_SIZE:
        return None
    holder, holder_span = None, (start, end)
    for element, (a, z) in spans.items():
        if start <= a and z <= end and z - a < holder_span[1] - holder_span[0]:
            if matched[z] - matched[a] >= 0.8 * total:
                holder, holder_span = element, (a, z)
    element = holder
    while element is not None and element in spans and spans[element] != (start, end):
        parent = element.getparent()
        if parent is None:
            return None
        shape = _shape(element)
        twins = [c for c in parent if c in spans and _shape(c) == shape]
        with_text = [c for c in twins[1:] if any(_is_long(line) for line in lines[slice(*spans[c])])]
        if twins[0] is element and len(with_text) >= 2:
            return spans[element]
        element = parent
    return None


def text_size(text: str) -> float:
    """Words of a text, counting 2.5 CJK characters as one word (a Chinese word is about that long)."""
    cjk = len(_CJK_CHAR.findall(text))
    return len(_WORD.findall(text)) - cjk + cjk / 2.5


def reconcile(dense: list[Line], picked: str, page: list[Line] | None = None) -> str:
    """Merge our densest block with trafilatura's text (one paragraph per line).

    Where they disagree on where the article is, the larger wins unless it is merely part of the
    other, or it is mostly link labels (`page`: all lines of the page, to tell) while our block is
    prose; where trafilatura took a good share of our block, its precision wins; where it took only
    a little (it drops short paragraphs, forum replies, lists), our block is kept less its short and
    link-heavy lines that trafilatura also left out.
    """
    dense_text = "\n".join(line.text for line in dense)
    picked_lines = [" ".join(line.split()) for line in picked.splitlines() if line.strip()]
    size_picked = sum(text_size(line) for line in picked_lines)
    size_dense = text_size(dense_text)
    if not picked_lines:
        return dense_text
    inside = sum(text_size(line) for line in picked_lines if line in dense_text)
    if inside < 0.5 * size_picked:
        if size_picked <= 0.5 * size_dense:
            return dense_text
        # A thread's reply index or a list of related links is larger than the post it follows.
        if size_dense >= _PROSE_MIN_SIZE and _link_share(picked_lines, page or []) >= 0.6:
            return dense_text
        return picked
    if size_dense <= 1.5 * size_picked:
        return picked
    picked_text = "\n".join(picked_lines)
    return "\n".join(
        line.text
        for line in dense
        if line.text in picked_text or (text_size(line.text) >= 12 and line.link_words <= 0.3 * line.words)
    )


def _link_share(picked_lines: list[str], page: list[Line]) -> float:
    """The share of link words among the page's paragraphs that trafilatura's text is made of."""
    # Without spaces: trafilatura breaks a list item's link from its trailing text onto two lines.
    picked_text = "".join("".join(picked_lines).split())
    found = [line for line in page if "".join(line.text.split()) in picked_text]
    words = sum(line.words for line in found)
    return sum(line.link_words for line in found) / words if words else 0.0


def read_html(body: bytes, url: str | None = None, declared_charset: str | None = None) -> HtmlPage:
    """Decode and parse one HTML document: main text, title, links, canonical, refresh, login form."""

    text, encoding = decode_html(body, declared_charset)
    tree = _parse_tree(text)
    if tree is None:
        return HtmlPage(text="", title="", encoding=encoding)
    links = [a.get("href") for a in tree.iter("a", "area") if a.get("href")]
    links += [f.get("src") for f in tree.iter("iframe", "frame") if f.get("src")]
    canonical = None
    for link in tree.iter("link"):
        if "canonical" in (link.get("rel") or "").lower().split() and link.get("href"):
            canonical = link.get("href").strip()
            break
    refresh = None
    for meta in tree.iter("meta"):
        if (meta.get("http-equiv") or "").lower() == "refresh":
            match = re.search(r"url\s*=\s*['\"]?([^'\";]+)", meta.get("content") or "", re.IGNORECASE)
            if match:
                refresh = match.group(1).strip()
    has_login = any((i.get("type") or "").lower() == "password" for i in tree.iter("input"))
    title = _page_title(tree)

    _remove_furniture(tree)
    _unwrap_layout_tables(tree)
    cms_body = _cms_body(tree)
    if cms_body is not None:
        main = _block_text(cms_body)
    else:
        main = _main_text(tree, url)
    return HtmlPage(
        text=clean_lines(main, title),
        title=title,
        encoding=encoding,
        links=links,
        canonical=canonical,
        refresh=refresh,
        has_login_form=has_login,
    )


def extract_main_text(html: bytes, url: str | None = None) -> str:
    """The main text of an HTML page (title first, one paragraph per line), from raw bytes."""
    return read_html(html, url).text


def main(argv: list[str] | None = None) -> int:
    """Print the title and main text of a saved HTML file."""
    parser = argparse.ArgumentParser(prog="python -m blocks.extract", description=__doc__.splitlines()[0])
    parser.add_argument("page", help="an HTML file")
    parser.add_argument("--url", default=None, help="the page's URL (helps resolve relative links)")
    args = parser.parse_args(argv)
    try:
        body = Path(args.page).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.page}: {exc.strerror}", file=sys.stderr)
        return 2
    page = read_html(body, args.url)
    print(f"# {page.title}  ({page.encoding})\n{page.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
