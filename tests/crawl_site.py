"""A loopback "trap" site for crawler tests: the demo campus site plus the hazards real sites have.

Everything under /trap/ is generated here; every other path is answered by blocks.demo_site. The
server logs each request (server.requests) and the bytes each path sent (server.bytes_sent).
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from blocks.demo_site import SITE_DIR, DemoSiteHandler, DemoSiteServer, Reply, build_pdf, route_request

VIDEO_BYTES = 50_000_000
PDF_LINES = ["Notice on the 2025 campus sports meeting", "", "The sports meeting is held on 18 April 2025.",
             "Registration closes on 1 April 2025 at the Sports Office, Room 105."]  # fmt: skip
NEWS_BODY = "".join(
    f"<p>第{i}条：东湖大学图书馆将于2025年3月{i}日起调整自习室开放时间，请同学们相互转告并遵守规定。</p>"
    for i in range(1, 9)
)


def page(title: str, body: str, charset: str = "utf-8", head: str = "") -> str:
    """An HTML page with campus-style furniture around `body`."""
    return (
        f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>{title}-东湖大学</title>{head}</head>'
        '<body><div class="nav"><a href="/index.htm">首页</a> <a href="/about/index.htm">学校概况</a></div>'
        f'<div class="content"><h1>{title}</h1>{body}</div>'
        '<div class="footer">版权所有 东湖大学 地址：湖北省武汉市洪山区湖滨路88号</div></body></html>'
    )


def build_docx(lines: list[str]) -> bytes:
    """A small DOCX made with python-docx."""
    import docx

    document = docx.Document()
    for line in lines:
        document.add_paragraph(line)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


class TrapServer(DemoSiteServer):
    """Demo site + traps; `overrides` (path -> HTML) and `removed` (paths) simulate a changed site."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, SITE_DIR)
        self.RequestHandlerClass = TrapHandler
        self.flaky_first: float | None = None
        self.too_early = 0
        self.bytes_sent: Counter[str] = Counter()
        self.overrides: dict[str, str] = {}
        self.removed: set[str] = set()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        """Request targets received, oldest first."""
        return [r.path for r in self.requests]

    def hub(self) -> str:
        """The trap start page: links to every hazard."""
        long_url = "/trap/long?x=" + "a" * 400
        links = [
            "/index.htm",
            "/trap/calendar?month=1",
            "/trap/list?PAGENUM=1",
            "/trap/flaky.htm",
            "/trap/slow.htm",
            "/trap/media?id=1",
            "/trap/download.jsp?fileid=7",
            "/trap/getfile?id=8",
            "/trap/gbk.htm",
            "/about/index.htm;jsessionid=ABCDEF0123",
            "/canteen/index.htm?utm_source=wechat&utm_medium=menu",
            f"http://localhost:{self.port}/trap/offsite.htm",
            "/admin/secret.htm",
            "/trap/refresh.htm",
            "/trap/news.htm",
            "/trap/copy.htm",
            "/trap/near.htm",
            "/trap/canon.htm?print=1",
            "/trap/loop1",
            "/trap/empty.htm",
            "/trap/missing.htm",
            "/portal/index.htm",
            long_url,
            "mailto:office@elu.edu.cn",
            "javascript:void(0)",
        ]
        body = "<p>测试用导航页，列出各类陷阱链接，供爬虫测试使用。</p><ul>"
        body += "".join(f'<li><a href="{href}">链接{i}</a></li>' for i, href in enumerate(links))
        return page("陷阱导航", body + "</ul>")


def trap_reply(server: TrapServer, path: str, query: dict[str, list[str]], headers: dict) -> Reply | None:
    """The generated response for a /trap/ path (None: let the demo site answer)."""
    html = {"Content-Type": "text/html; charset=utf-8"}
    if path in server.removed:
        return Reply(HTTPStatus.NOT_FOUND, html, page("404", "<p>页面不存在</p>").encode())
    if path in server.overrides:
        from blocks.demo_site import reply_resource

        return reply_resource(server.overrides[path].encode(), html["Content-Type"], time.time(), headers)
    if path == "/trap/start.htm":
        return Reply(200, html, server.hub().encode())
    if path == "/trap/calendar":
        month = int(query.get("month", ["1"])[0])
        body = (
            f"<p>校历第{month}月：本月共有{month % 5 + 20}个教学日，请按时上课。</p><p>月份编号 {month}。</p>"
        )
        body += f'<a href="/trap/calendar?month={month + 1}">下个月</a>'
        return Reply(200, html, page(f"校历 {month} 月", body).encode())
    if path == "/trap/list":
        n = int(query.get("PAGENUM", ["1"])[0])
        body = f"<p>通知列表第{n}页，共有若干条通知，编号{n * 7919}。</p>"
        body += f'<a href="/trap/list?PAGENUM={n + 1}">下一页</a>'
        return Reply(200, html, page(f"通知列表 {n}", body).encode())
    if path == "/trap/flaky.htm":
        with server.lock:
            if server.flaky_first is None:
                server.flaky_first = time.monotonic()
                return Reply(503, {"Retry-After": "1", **html}, b"busy")
            if time.monotonic() - server.flaky_first < 1.0:
                server.too_early += 1
                return Reply(503, {"Retry-After": "1", **html}, b"busy")
        return Reply(
            200,
            html,
            page(
                "临时故障后恢复的页面",
                "<p>这一页第一次访问时返回503，之后恢复正常，内容是校车时刻表：每30分钟一班。</p>",
            ).encode(),
        )
    if path == "/trap/slow.htm":
        time.sleep(3)
        return Reply(200, html, page("很慢的页面", "<p>这一页需要很久才能返回。</p>").encode())
    if path == "/trap/download.jsp":
        pdf = build_pdf(PDF_LINES, title="Sports meeting notice")
        return Reply(
            200,
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": 'attachment; filename="sports.pdf"',
            },
            pdf,
        )
    if path == "/trap/getfile":
        body = build_docx(
            ["关于2025年春季运动会报名的补充说明", "报名表请于3月25日前交至体育部105室，逾期不再受理。"]
        )
        return Reply(
            200,
            {"Content-Type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
            body,
        )
    if path == "/trap/gbk.htm":
        text = page(
            "关于镕园宿舍维修的通知",
            "<p>镕园3栋将于3月10日停水维修，请同学们提前储水，给大家带来不便敬请谅解。</p>",
            "gb2312",
        )
        return Reply(200, {"Content-Type": "text/html"}, text.encode("gbk"))
    if path == "/trap/offsite.htm":
        return Reply(200, html, page("站外页面", "<p>不应被爬取。</p>").encode())
    if path == "/trap/refresh.htm":
        head = '<meta http-equiv="refresh" content="0; url=/trap/target.htm">'
        return Reply(200, html, page("", "", head=head).replace("<h1></h1>", "").encode())
    if path == "/trap/target.htm":
        return Reply(
            200,
            html,
            page(
                "跳转后的页面",
                "<p>这是通过meta refresh跳转到达的页面，内容为体育馆开放时间：每天8:00-21:00。</p>",
            ).encode(),
        )
    if path in ("/trap/news.htm", "/trap/copy.htm"):
        if path == "/trap/news.htm":
            time.sleep(0.3)  # the original answers after its copy: the copy must still be the one skipped
        return Reply(200, html, page("图书馆自习室调整通知", NEWS_BODY).encode())
    if path == "/trap/near.htm":
        return Reply(200, html, page("图书馆自习室调整通知", NEWS_BODY + "<p>浏览：99</p>").encode())
    if path == "/trap/canon.htm":
        head = '<link rel="canonical" href="/trap/news.htm">'
        return Reply(200, html, page("图书馆自习室调整通知", NEWS_BODY + "<p>打印版</p>", head=head).encode())
    if path == "/trap/loop1":
        return Reply(302, {"Location": "/trap/loop2"})
    if path == "/trap/loop2":
        return Reply(302, {"Location": "/trap/loop1"})
    if path == "/trap/empty.htm":
        return Reply(
            200, html, b"<html><head><title>empty</title></head><body><div class='nav'>x</div></body></html>"
        )
    return None


class TrapHandler(DemoSiteHandler):
    """Routes /trap/ paths here and streams the video slowly so a client can hang up early."""

    server: TrapServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        headers = self.lower_headers()
        if parts.path == "/trap/media":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(VIDEO_BYTES))
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(VIDEO_BYTES // len(chunk)):
                    self.wfile.write(chunk)
                    self.server.bytes_sent[parts.path] += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        reply = trap_reply(self.server, parts.path, parse_qs(parts.query), headers)
        if reply is None:
            reply = route_request(self.server, "GET", self.path, headers)
        self.send_reply(reply, with_body=True)
        self.server.bytes_sent[parts.path] += len(reply.body)


def start_trap_site() -> tuple[TrapServer, threading.Thread]:
    """Serve the trap site on 127.0.0.1 (any free port) from a daemon thread."""
    server = TrapServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
