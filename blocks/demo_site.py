"""Serve the fictional Eastlake University (东湖大学) demo website on loopback for crawl tests and demos.

    python -m blocks.demo_site                      # http://127.0.0.1:8765/ until Ctrl-C
    python -m blocks.demo_site --host 127.0.0.1 --port 0
    python -m blocks.demo_site --host 0.0.0.0 --allow-public

Besides the static files in assets/demo_site/ it behaves like a messy campus CMS: a 301 redirect, a CAS
login wall, a GBK page, a PDF attachment (also behind an extension-less download.jsp URL), `;jsessionid`
path parameters, a query-string article URL, 404/403 pages, and ETag/Last-Modified revalidation.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from blocks.workspace import is_loopback

SITE_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_site"
PDF_PATH = "/attach/2025/0310/summer-research-guide.pdf"
DOWNLOAD_PATH = "/system/_content/download.jsp"
DOWNLOAD_FILE_ID = "99"
REDIRECTS = {"/old-library.htm": "/library/index.htm"}
LOGIN_WALLED = "/portal"
FORBIDDEN = "/admin"
HIDDEN_FILES = {"facts.json"}
# Fixed so that ETag/Last-Modified of the generated PDF stay stable across restarts.
PDF_MTIME = 1741564800.0  # 2025-03-10 00:00 UTC
PDF_LINES = [
    "Eastlake University - Office of Academic Affairs",
    "2025 Summer Research Training Program for Undergraduates: Application Guide",
    "",
    "1. Eligibility: full-time second- and third-year undergraduates in good academic standing.",
    "2. Teams: one faculty advisor and at most three students per project.",
    "3. Application deadline: 15 April 2025. Submit the form in the Academic Affairs system.",
    "4. Results will be announced in May 2025; projects run from 1 July to 31 August 2025.",
    "5. Stipend: 1,500 RMB per student per month, paid through the campus card.",
    "6. Each project receives up to 5,000 RMB for materials, reimbursed by the Finance Office.",
    "7. Final reports are due on 15 September 2025; outstanding projects are shown at the Research Fair.",
    "",
    "Contact: Practice Teaching Section, Room 203, Administration Building. Tel: 027-87651020.",
]
CONTENT_TYPES = {
    ".htm": "text/html",
    ".html": "text/html",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
}
META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class LoggedRequest:
    """One request the demo site received, as a test would want to inspect it."""

    method: str
    path: str  # raw request target, query and ;jsessionid included
    headers: dict[str, str]
    status: int


@dataclass
class Reply:
    """A response to send: status, headers and body (the body is dropped for HEAD and 304)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class PathTraversalError(ValueError):
    """The request path tries to leave the site folder."""


def build_pdf(lines: list[str], title: str = "Document") -> bytes:
    """Return a minimal one-page PDF (Helvetica, WinAnsi) whose text pypdf can extract."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 10 Tf", "15 TL", "50 790 Td"]
    ops += [f"({escape(line)}) Tj T*" for line in lines]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (%s) /Producer (UMTCDS demo_site) >>" % escape(title).encode("latin-1"),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into a decoded site path and its raw query; drop ;jsessionid-style params."""
    parts = urlsplit(target)
    # Tomcat-style path parameters (";jsessionid=...") are not part of the resource name.
    raw_path = "/".join(segment.split(";", 1)[0] for segment in parts.path.split("/"))
    path = unquote(raw_path)
    segments = path.split("/")
    if not path.startswith("/") or ".." in segments or "\\" in path or "\x00" in path:
        raise PathTraversalError(f"refusing path outside the site: {target!r}")
    return path, parts.query


def resolve_file(root: Path, path: str) -> Path | None:
    """Map a decoded site path to a file inside root (index.htm for folders), or None if there is none."""
    candidate = (root / path.lstrip("/")).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise PathTraversalError(f"refusing path outside the site: {path!r}")
    if candidate.is_dir():
        candidate = candidate / "index.htm"
    if not candidate.is_file() or candidate.name in HIDDEN_FILES or candidate.name.startswith("."):
        return None
    return candidate


def guess_content_type(name: str, body: bytes) -> str:
    """Return the Content-Type for a file; HTML gets the charset its own meta tag declares."""
    suffix = Path(name).suffix.lower()
    content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
    if content_type == "text/html":
        match = META_CHARSET.search(body[:2048])
        charset = match.group(1).decode("ascii").lower() if match else "utf-8"
        content_type = f"text/html; charset={charset}"
    return content_type


def make_etag(body: bytes) -> str:
    """Return a strong ETag for a body."""
    return '"' + hashlib.sha1(body).hexdigest()[:16] + '"'


def is_not_modified(headers: dict[str, str], etag: str, mtime: float) -> bool:
    """Apply If-None-Match (preferred) or If-Modified-Since to a resource's validators."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError):
            return False
        return int(mtime) <= since
    return False


def reply_resource(body: bytes, content_type: str, mtime: float, headers: dict[str, str]) -> Reply:
    """Return 200 with validators, or 304 when the client's copy is current."""
    etag = make_etag(body)
    validators = {"ETag": etag, "Last-Modified": formatdate(mtime, usegmt=True)}
    if is_not_modified(headers, etag, mtime):
        return Reply(HTTPStatus.NOT_MODIFIED, validators)
    return Reply(HTTPStatus.OK, {"Content-Type": content_type, **validators}, body)


def render_page(title: str, body_html: str) -> bytes:
    """Render a small UTF-8 page in the site's look for generated responses (errors, login, search)."""
    page = (
        '<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}-东湖大学</title>\n"
        '<link rel="stylesheet" href="/css/style.css">\n</head>\n<body>\n'
        '<div class="header"><div class="wrap"><a href="/index.htm" class="logo">东湖大学 Eastlake University</a>'
        "</div></div>\n"
        f'<div class="main wrap">\n{body_html}\n</div>\n'
        '<div class="footer"><div class="wrap"><p>版权所有 Copyright 2024 东湖大学&nbsp;&nbsp;'
        "地址：湖北省武汉市洪山区湖滨路88号</p></div></div>\n</body>\n</html>\n"
    )
    return page.encode("utf-8")


def reply_html(status: int, title: str, body_html: str, extra: dict[str, str] | None = None) -> Reply:
    """Return a generated HTML page that must not be cached."""
    headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store", **(extra or {})}
    return Reply(status, headers, render_page(title, body_html))


def reply_not_found(path: str) -> Reply:
    """Return the site's 404 page."""
    return reply_html(
        HTTPStatus.NOT_FOUND,
        "404 页面不存在",
        '<div class="error-page"><h1>404</h1><p>抱歉，您访问的页面不存在或已被删除。</p>'
        f"<p>请求地址：{html.escape(path)}</p>"
        '<p><a href="/index.htm">返回首页</a> | <a href="/index/tzgg.htm">通知公告</a></p></div>',
    )


def reply_login_form(query: str, error: str = "") -> Reply:
    """Return a CAS-like unified-authentication login form (the wall in front of the portal)."""
    service = parse_qs(query).get("service", [""])[0]
    action = "/authserver/login" + (f"?service={quote(service, safe='')}" if service else "")
    message = f'<p class="auth_error" id="msg">{html.escape(error)}</p>' if error else ""
    return reply_html(
        HTTPStatus.OK,
        "统一身份认证平台",
        '<div class="auth_login_content"><h2>统一身份认证平台</h2>'
        f"{message}"
        f'<form id="casLoginForm" method="post" action="{html.escape(action)}">'
        '<p><label for="username">学号/工号</label><input id="username" name="username" type="text"></p>'
        '<p><label for="password">密码</label><input id="password" name="password" type="password"></p>'
        '<p><label for="captchaResponse">验证码</label><input id="captchaResponse" name="captchaResponse">'
        "</p>"
        '<input type="hidden" name="lt" value="LT-4821-Kq9xT2bWzR-cas">'
        '<input type="hidden" name="execution" value="e1s1"><input type="hidden" name="_eventId" value="submit">'
        '<button type="submit">登录</button></form>'
        '<p><a href="/nic/helpdesk.htm">忘记密码？</a> 首次登录请使用身份证号后六位作为初始密码。</p></div>',
        {"Set-Cookie": "JSESSIONID=ABC123; Path=/authserver; HttpOnly"},
    )


def route_request(site: DemoSiteServer, method: str, target: str, headers: dict[str, str]) -> Reply:
    """Decide the response to one request; headers keys are lower-case."""
    try:
        path, query = split_target(target)
    except PathTraversalError:
        return reply_html(HTTPStatus.BAD_REQUEST, "400 Bad Request", "<h1>400 Bad Request</h1>")
    origin = "http://" + headers.get("host", f"{site.server_address[0]}:{site.server_address[1]}")

    if path == "/authserver/login":
        error = "用户名或密码错误，请重新输入。" if method == "POST" else ""
        return reply_login_form(query, error)
    if method == "POST":
        return reply_html(
            HTTPStatus.METHOD_NOT_ALLOWED, "405", "<h1>405 Method Not Allowed</h1>", {"Allow": "GET, HEAD"}
        )
    if path in REDIRECTS:
        return Reply(HTTPStatus.MOVED_PERMANENTLY, {"Location": origin + REDIRECTS[path]})
    if path == LOGIN_WALLED or path.startswith(LOGIN_WALLED + "/"):
        service = quote(origin + path, safe="")
        return Reply(HTTPStatus.FOUND, {"Location": f"{origin}/authserver/login?service={service}"})
    if path == FORBIDDEN or path.startswith(FORBIDDEN + "/"):
        return reply_html(
            HTTPStatus.FORBIDDEN, "403 Forbidden", "<h1>403 Forbidden</h1><p>您没有权限访问该页面。</p>"
        )
    if path == "/search":
        keyword = html.escape(parse_qs(query).get("q", [""])[0])
        return reply_html(
            HTTPStatus.OK, "搜索结果", f"<h1>搜索结果</h1><p>关键字“{keyword}”共找到0条结果。</p>"
        )
    if path == PDF_PATH:
        return reply_resource(site.pdf, "application/pdf", PDF_MTIME, headers)
    if path == DOWNLOAD_PATH:
        if parse_qs(query).get("wbfileid") != [DOWNLOAD_FILE_ID]:
            return reply_not_found(target)
        reply = reply_resource(site.pdf, "application/pdf", PDF_MTIME, headers)
        reply.headers["Content-Disposition"] = 'attachment; filename="notice.pdf"'
        return reply
    if path == "/content.jsp":
        params = parse_qs(query)
        tree, news = params.get("wbtreeid", [""])[0], params.get("wbnewsid", [""])[0]
        if not (tree.isascii() and tree.isdigit() and news.isascii() and news.isdigit()):
            return reply_not_found(target)
        path = f"/info/{tree}/{news}.htm"

    try:
        file = resolve_file(site.root, path)
    except PathTraversalError:
        return reply_html(HTTPStatus.BAD_REQUEST, "400 Bad Request", "<h1>400 Bad Request</h1>")
    if file is None:
        return reply_not_found(target)
    if (site.root / path.lstrip("/")).is_dir() and not path.endswith("/"):
        # A folder asked for without its slash: redirect like Apache/nginx so relative links resolve.
        return Reply(HTTPStatus.MOVED_PERMANENTLY, {"Location": origin + path + "/"})
    body = file.read_bytes()
    return reply_resource(body, guess_content_type(file.name, body), file.stat().st_mtime, headers)


class DemoSiteServer(ThreadingHTTPServer):
    """Threaded HTTP server that holds the site folder, the generated PDF and the request log."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DemoSiteHandler)
        self.root = root
        self.pdf = build_pdf(PDF_LINES, title="2025 Summer Research Training Program Guide")
        self.requests: list[LoggedRequest] = []

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up mid-response; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class DemoSiteHandler(BaseHTTPRequestHandler):
    """Answer one request through route_request and log it into server.requests instead of stderr."""

    server: DemoSiteServer
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        """Name the server like the CMS front end a campus site would run."""
        return "VWebServer/6.0"

    def do_GET(self) -> None:
        """Serve GET."""
        self.send_reply(route_request(self.server, "GET", self.path, self.lower_headers()), with_body=True)

    def do_HEAD(self) -> None:
        """Serve HEAD: the GET headers without the body."""
        self.send_reply(route_request(self.server, "HEAD", self.path, self.lower_headers()), with_body=False)

    def do_POST(self) -> None:
        """Serve POST (only the login form accepts it); the form body is read and ignored."""
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_reply(route_request(self.server, "POST", self.path, self.lower_headers()), with_body=True)

    def lower_headers(self) -> dict[str, str]:
        """Return request headers keyed by lower-case name."""
        return {name.lower(): value for name, value in self.headers.items()}

    def send_reply(self, reply: Reply, with_body: bool) -> None:
        """Write a Reply; Content-Length always matches the body GET would get (keep-alive needs it)."""
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if with_body and reply.status != HTTPStatus.NOT_MODIFIED:
            self.wfile.write(reply.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Record the request in server.requests (called by send_response)."""
        status = int(code) if str(code).isdigit() else 0
        headers = dict(self.headers.items()) if hasattr(self, "headers") else {}
        self.server.requests.append(LoggedRequest(self.command or "", self.path or "", headers, status))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base-class signature)
        """Keep stderr quiet; the request log lives in server.requests."""


@dataclass
class DemoSite:
    """A running demo site: its base URL (no trailing slash), port and request log; stop() shuts it down."""

    server: DemoSiteServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """Return the bound port."""
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:8765 (append "/" for the home page)."""
        host = self.server.server_address[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[LoggedRequest]:
        """Return the live list of requests received so far (oldest first)."""
        return self.server.requests

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> DemoSite:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_demo_site(host: str = "127.0.0.1", port: int = 0, allow_public: bool = False) -> DemoSite:
    """Serve assets/demo_site/ on host:port (0 = any free port) from a daemon thread."""
    if not allow_public and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the demo site on non-loopback address {host!r}: "
            "use 127.0.0.1, or pass --allow-public (allow_public=True) to expose it"
        )
    server = DemoSiteServer((host, port), SITE_DIR)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"demo-site-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return DemoSite(server, thread)


def main(argv: list[str] | None = None) -> int:
    """Run the demo site until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m blocks.demo_site", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="port to bind, 0 for any free port (default 8765)"
    )
    parser.add_argument("--allow-public", action="store_true", help="allow binding a non-loopback address")
    args = parser.parse_args(argv)
    try:
        site = start_demo_site(args.host, args.port, allow_public=args.allow_public)
    except ValueError as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(f"cannot bind {args.host}:{args.port}: {error.strerror}; choose another --port")
    print(f"Eastlake University demo site: {site.url}/  (Ctrl-C to stop)", flush=True)
    try:
        while site.thread.is_alive():
            site.thread.join(timeout=0.5)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        site.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
