"""A loopback web server that misbehaves on purpose: resets, truncated bodies, binary "HTML", bad charsets.

`start_hostile_site()` returns a server with `.url`, `.paths` (request log) and `.stop()`. Good pages
are /good/<n>.htm; each hazard has its own path (see ROUTES). `server.delay` slows every page (for
kill-mid-crawl tests) and `server.robots` replaces robots.txt.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_PAGES = 12
PARAGRAPH = "东湖大学第{n}号通知：图书馆{n}楼自习室于每天8:00至22:00开放，请同学们按时入座并保持安静。"


def good_page(n: int, links: list[str] = ()) -> bytes:
    """A campus-looking page with enough unique text to be saved."""
    body = "".join(f"<p>{PARAGRAPH.format(n=n)} 段落{k}，编号{n * 101 + k}。</p>" for k in range(4))
    anchors = "".join(f'<a href="{href}">link</a> ' for href in links)
    return (f"<html><head><meta charset='utf-8'><title>通知 {n}</title></head><body><h1>通知 {n}</h1>"
            f"{body}<div>{anchors}</div></body></html>").encode()  # fmt: skip


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.delay = 0.0
        self.robots: bytes | None = b"User-agent: *\nAllow: /\n"
        self.robots_redirect: str | None = None  # answer /robots.txt with a 302 to this URL
        self.start_links = [f"/good/{n}.htm" for n in range(1, GOOD_PAGES + 1)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        """Clients hanging up on purpose (the crawler's size cap) are not errors worth printing."""

    @property
    def paths(self) -> list[str]:
        with self.lock:
            return list(self.log)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class HostileHandler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: C901 (one branch per hazard reads best as a table)
        server = self.server
        path = self.path.split("?")[0]
        with server.lock:
            server.log.append(self.path)
        if path == "/robots.txt":
            if server.robots_redirect:
                return self.send(302, b"", Location=server.robots_redirect)
            if server.robots is None:
                return self.send(404, b"no robots")
            return self.send(200, server.robots, "text/plain")
        if server.delay:
            time.sleep(server.delay)
        if path == "/start.htm":
            return self.send(200, good_page(0, server.start_links))
        if path.startswith("/good/"):
            n = int(path.rsplit("/", 1)[1].split(".")[0])
            return self.send(200, good_page(n))
        if path == "/reset.htm":
            return self.reset()
        if path == "/reset-mid.htm":  # headers, part of the body, then RST
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", "50000")
            self.end_headers()
            self.wfile.write(good_page(900)[:200])
            self.wfile.flush()
            return self.reset()
        if path == "/truncated.htm":  # Content-Length larger than the body, then a clean close
            body = good_page(901)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body) + 5000))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/binary.htm":
            return self.send(200, bytes(range(256)) * 64)
        if path == "/nul.htm":
            return self.send(200, b"\x00" * 20000)
        if path == "/badcharset.htm":
            return self.send(200, good_page(902), "text/html; charset=x-no-such-charset")
        if path == "/badmeta.htm":
            page = good_page(903).replace(b"charset='utf-8'", b"charset='utf-99-nonsense'")
            return self.send(200, page, "text/html")
        if path == "/invalid-utf8.htm":
            page = good_page(904).replace("自习室".encode(), b"\xff\xfe\xfa")
            return self.send(200, page)
        if path == "/huge-declared.htm":  # a Content-Length over the cap: refused before reading
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"<html>" + b"x" * 1000)
            self.close_connection = True
            return
        if path == "/huge-streamed.htm":  # no Content-Length; streams until the client hangs up
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"<p>" + b"x" * 65530 + b"</p>"
            try:
                for _ in range(500):  # 32 MB at most
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        if path == "/loop":
            return self.send(302, b"", Location="/loop")
        if path == "/loop-a":
            return self.send(302, b"", Location="/loop-b")
        if path == "/loop-b":
            return self.send(302, b"", Location="/loop-a")
        if path == "/image.png":
            return self.send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
        if path == "/plain.txt":
            return self.send(200, b"just text", "application/json")
        if path.startswith("/to/"):  # redirect anywhere: /to/<url-encoded target>
            from urllib.parse import unquote

            return self.send(302, b"", Location=unquote(path[4:]))
        return self.send(404, b"<html><body>not found</body></html>")


def start_hostile_site() -> HostileServer:
    """Serve the hostile site on 127.0.0.1 (any free port) from a daemon thread."""
    server = HostileServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
