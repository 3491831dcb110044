"""A loopback HTTP server speaking the OpenAI / Zhipu chat-completions shape, with injectable faults.

The real `openai` and `zhipuai` SDKs talk to it over HTTP (`base_url=server.url`). Faults:
latency, 429 with Retry-After, 500, malformed JSON bodies, empty outputs, Zhipu content-filter
refusals (HTTP 400, code 1301), Zhipu rate limits (HTTP 429, code 1302), a body nested 100,000 deep
("nested"), a body cut off before its Content-Length ("truncated") and an error body that quotes the
request's Authorization header back ("echo_auth", HTTP 400). A responder may answer text with lone
surrogates ("\\ud800"): it is sent as a JSON escape, as a real server would.

    with FakeLLMServer(responder=lambda messages: "hello", latency=0.3) as server:
        server.fail_next("429", "500")          # the next two requests fail, then normal answers
        server.rate_429 = 0.2                   # or: a random 20% of requests get 429
        server.rates = {"500": 0.1, "malformed": 0.05}   # any fault at random, each with its share
        server.fault_for = lambda messages: "nested" if "page 3" in messages[-1]["content"] else None
        openai.OpenAI(base_url=server.url, api_key="k", max_retries=0)

    python tests/fake_llm_server.py --port 8900 --latency 0.3   # stand-alone, echoes the last message
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Responder = Callable[[list[dict]], str]
FAULTS = ("429", "1302", "500", "malformed", "empty", "1301", "401", "nested", "truncated", "echo_auth")


def echo_responder(messages: list[dict]) -> str:
    """Answer with the last user message (useful to see what the client sent)."""
    return str(messages[-1]["content"])


class FakeLLMServer:
    """Threaded chat-completions server on 127.0.0.1; records every request it answers."""

    def __init__(
        self,
        responder: Responder = echo_responder,
        latency: float = 0.0,
        retry_after: str = "1",
        rate_429: float = 0.0,
        seed: int = 0,
        port: int = 0,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.retry_after = retry_after
        self.rate_429 = rate_429
        self.rates: dict[str, float] = {}  # fault -> share of requests answered with it (seeded)
        # messages -> fault or None: a fault for the requests of one page (after queued faults, before rates)
        self.fault_for: Callable[[list[dict]], str | None] | None = None
        self.requests: list[dict] = []  # {"body": ..., "auth": ..., "fault": ..., "time": ...}
        self.not_found = 0  # requests to another path than /v1/chat/completions (answered 404)
        self._faults: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at the same moment
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._make_handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, *faults: str) -> None:
        """Queue faults (one of FAULTS) answered to the next requests, in order."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_fault(self, messages: list[dict]) -> str | None:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
            chosen = self.fault_for(messages) if self.fault_for is not None else None
            if chosen is not None:
                return chosen
            if self.rate_429 and self._rng.random() < self.rate_429:
                return "429"
            draw, edge = self._rng.random(), 0.0
            for fault, share in self.rates.items():
                edge += share
                if draw < edge:
                    return fault
        return None

    def _make_handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":  # a wrong base URL path gets 404
                    with server._lock:
                        server.not_found += 1
                    return self._send(404, {"error": {"code": "404", "message": "not found"}})
                fault = server._next_fault(body.get("messages", []))
                with server._lock:
                    server.requests.append(
                        {
                            "body": body,
                            "auth": self.headers.get("Authorization"),
                            "fault": fault,
                            "time": time.time(),
                        }
                    )
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(body, fault, self.headers.get("Authorization") or "")
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict, fault: str | None, auth: str) -> None:
                if server.latency:
                    time.sleep(server.latency)
                if fault == "429":
                    msg = {"error": {"code": "429", "message": "Too many requests"}}
                    return self._send(429, msg, {"Retry-After": server.retry_after})
                if fault == "1302":
                    msg = {"error": {"code": "1302", "message": "您当前使用该API的并发数过高，请降低并发"}}
                    return self._send(429, msg)
                if fault == "500":
                    return self._send(500, {"error": {"code": "500", "message": "Internal error"}})
                if fault == "401":
                    return self._send(401, {"error": {"code": "1000", "message": "身份验证失败"}})
                if fault == "1301":
                    msg = {
                        "error": {
                            "code": "1301",
                            "message": "系统检测到输入或生成内容可能包含不安全或敏感内容",
                        }
                    }
                    return self._send(400, msg)
                if fault == "echo_auth":  # some servers quote the request's headers in their errors
                    msg = {
                        "error": {"code": "400", "message": f"bad request; headers: Authorization: {auth}"}
                    }
                    return self._send(400, msg)
                if fault == "nested":
                    depth = 100_000
                    return self._send_raw(200, b'{"choices": ' + b"[" * depth + b"]" * depth + b"}")
                if fault == "truncated":  # the headers promise more than is sent, then the connection ends
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4096")
                    self.end_headers()
                    self.wfile.write(b'{"id": "x", "choices": [{"message": {"content": "cut')
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if fault == "malformed":
                    return self._send_raw(200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
                content = "" if fault == "empty" else server.responder(body.get("messages", []))
                reply = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                return self._send(200, reply)

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                try:
                    data = json.dumps(payload, ensure_ascii=False).encode()
                except UnicodeEncodeError:  # a lone surrogate: only a JSON escape can carry it
                    data = json.dumps(payload).encode()
                self._send_raw(status, data, headers)

            def _send_raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeLLMServer(latency=args.latency, rate_429=args.rate_429, port=args.port).start()
    print(f"fake LLM server at {server.url}", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- helpers shared by the stage tests

DEMO_PAGES = [
    (
        "https://www.ehu.edu.cn/library/index.htm",
        "东湖大学图书馆",
        "首页 | 学校概况 | 图书馆\n东湖大学图书馆总馆位于主校区中心，建筑面积4.2万平方米。\n"
        "总馆开放时间为每天8:00至22:00，考试周延长至24:00。\n"
        "借阅咨询电话：027-87651234。\n版权所有 © 东湖大学",
    ),
    (
        "https://www.ehu.edu.cn/canteen/index.htm",
        "东湖大学校园餐饮服务指南",
        "学校共有食堂5个，可同时容纳1.2万人就餐。\n一食堂（桂香园）早餐时间为6:30至9:00。\n"
        "清真餐厅位于二食堂（枫林园）一楼。\n版权所有 © 东湖大学",
    ),
    (
        "https://www.ehu.edu.cn/housing/index.htm",
        "东湖大学学生宿舍",
        "东湖大学本科生宿舍位于校园东区，四人间住宿费为每学年1200元。\n"
        "宿舍每晚23:00关闭大门。\n版权所有 © 东湖大学",
    ),
]


def write_crawl(project_root, pages=DEMO_PAGES) -> None:
    """Write crawl/pages.jsonl + crawl/pages/<id>.txt in the format of docs/CONTRACTS.md."""
    import hashlib
    from pathlib import Path

    crawl = Path(project_root) / "crawl"
    (crawl / "pages").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (url, title, text) in enumerate(pages):
        name = f"pages/{n:06d}.txt"
        (crawl / name).write_text(text + "\n", encoding="utf-8")
        record = {
            "url": url,
            "final_url": url,
            "title": title,
            "depth": 1,
            "parent_url": "https://www.ehu.edu.cn/",
            "content_type": "text/html",
            "encoding": "utf-8",
            "fetched_at": "2026-11-28T00:00:00+00:00",
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "text_file": name,
            "status": "new",
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    (crawl / "pages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def document_of(messages: list[dict]) -> str:
    """The page text a default prompt carries between <document> tags."""
    content = messages[-1]["content"]
    start, end = content.find("<document>"), content.find("</document>")
    return content[start + len("<document>") : end].strip() if start >= 0 else content


def campus_responder(messages: list[dict]) -> str:
    """A well-behaved model for the default prompts: cleans, writes grounded JSON pairs, judges, rephrases."""
    content = messages[-1]["content"]
    if "JSON 字符串数组" in content or "JSON array of strings" in content:
        question = content.split("问题：", 1)[-1].split("Question: ", 1)[-1].strip()
        return json.dumps([f"请问{question}", f"我想知道{question}"], ensure_ascii=False)
    if "只回答“是”或“否”" in content or 'Reply with only "yes"' in content:
        return "是"
    text = document_of(messages)
    lines = [ln for ln in text.splitlines() if ln.strip() and "版权" not in ln and "|" not in ln]
    if "JSON" in content:
        title = content.split("“", 1)[1].split("”", 1)[0] if "“" in content else "东湖大学"
        pairs = [{"question": f"{title}：{ln[:12]}……的具体情况是什么？", "answer": ln} for ln in lines]
        return json.dumps(pairs, ensure_ascii=False)
    return "\n".join(lines)
