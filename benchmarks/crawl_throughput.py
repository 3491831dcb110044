"""Crawl throughput: blocks.crawl vs a minimal Scrapy spider on a generated loopback site, same run.

    python benchmarks/crawl_throughput.py [--pages 500] [--concurrency 8]

Each crawler runs in its own subprocess (Scrapy's reactor cannot restart) against the same server,
delay 0, same concurrency. Scrapy is measured twice: following links only, and also extracting the
main text with the same extract_main_text (the work blocks.crawl does). Memory is the peak RSS of
the subprocess, measured at half and full site size. Writes benchmarks/_out/crawl_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "_out"


def make_page(i: int, n: int) -> bytes:
    """Page i of an n-page campus-like site: nav, footer, 8 paragraphs, links to 6 other pages."""
    links = "".join(f'<li><a href="/news/{(i * 7 + k * 13 + 1) % n}.htm">通知 {k}</a></li>' for k in range(6))
    paragraphs = "".join(
        f"<p>第{i}号通知第{k}段：东湖大学第{i}号通知的正文内容，涉及教学安排、图书馆开放时间与后勤服务，编号{i * 31 + k}。</p>"
        for k in range(8)
    )
    html = (
        f'<html><head><meta charset="utf-8"><title>通知 {i}-东湖大学</title></head><body>'
        '<div class="nav"><a href="/news/0.htm">首页</a></div>'
        f'<div class="content"><h1>第{i}号通知</h1>{paragraphs}</div>'
        f'<ul class="related">{links}</ul><div class="footer">版权所有 东湖大学</div></body></html>'
    )
    return html.encode("utf-8")


def serve(n: int) -> ThreadingHTTPServer:
    """A threaded loopback server for the generated site."""
    pages = {f"/news/{i}.htm": make_page(i, n) for i in range(n)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server naming)
            body = pages.get(self.path)
            if self.path == "/robots.txt":
                body, status = b"User-agent: *\nDisallow: /admin/\n", 200
            else:
                status = 200 if body else 404
                body = body or b"not found"
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


OURS = """
import sys, time, resource
from pathlib import Path
from blocks.crawl import CrawlOptions, crawl_site
url, out, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
opts = CrawlOptions(delay=0, concurrency=conc, max_depth=1000, max_pages=n + 10, near_duplicate_bits=-1)
for p in crawl_site(url, Path(out), opts):
    pass
print(p.fetched, p.saved, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

SCRAPY = """
import sys, time, resource
import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.linkextractors import LinkExtractor
url, n, conc, extract = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if extract:
    from blocks.extract import extract_main_text
count = [0]
class Spider(scrapy.Spider):
    name = "bench"
    start_urls = [url]
    links = LinkExtractor()
    def parse(self, response):
        count[0] += 1
        if extract:
            extract_main_text(response.body, response.url)
        for link in self.links.extract_links(response):
            yield response.follow(link.url, self.parse)
process = CrawlerProcess({"CONCURRENT_REQUESTS": conc, "CONCURRENT_REQUESTS_PER_DOMAIN": conc, "DOWNLOAD_DELAY": 0,
    "ROBOTSTXT_OBEY": True, "LOG_ENABLED": False, "TELNETCONSOLE_ENABLED": False, "DEPTH_PRIORITY": 1,
    "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
    "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue"})
process.crawl(Spider)
t = time.perf_counter()
process.start()
print(count[0], count[0], time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(code: str, args: list[str]) -> dict:
    """Run one crawler subprocess; returns pages, seconds, pages/s and peak RSS (MiB)."""
    # A real file, not -c: Scrapy inspects the spider's source to check its callbacks.
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        command = [sys.executable, script.name, *args]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    finally:
        os.unlink(script.name)
    fetched, saved, seconds, rss_kb = result.stdout.split()[-4:]
    seconds = float(seconds)
    return {"pages": int(fetched), "seconds": round(seconds, 2), "pages_per_s": round(int(fetched) / seconds, 1),
            "peak_rss_mib": round(int(rss_kb) / 1024, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    results = {}
    for n in (args.pages // 2, args.pages):
        server = serve(n)
        url = f"http://127.0.0.1:{server.server_address[1]}/news/0.htm"
        with tempfile.TemporaryDirectory() as tmp:
            ours = run(OURS, [url, tmp, str(n), str(args.concurrency)])
        scrapy_links = run(SCRAPY, [url, str(n), str(args.concurrency), "0"])
        scrapy_extract = run(SCRAPY, [url, str(n), str(args.concurrency), "1"])
        server.shutdown()
        results[n] = {
            "blocks.crawl": ours,
            "scrapy (links only)": scrapy_links,
            "scrapy + extract": scrapy_extract,
        }
    print(f"{'site':>5} {'crawler':<20} {'pages':>6} {'s':>7} {'pages/s':>8} {'RSS MiB':>8}")
    for n, row in results.items():
        for name, r in row.items():
            print(
                f"{n:>5} {name:<20} {r['pages']:>6} {r['seconds']:>7} {r['pages_per_s']:>8} {r['peak_rss_mib']:>8}"
            )
    full = results[args.pages]
    ratios = {
        "vs_scrapy_links_only": round(full["blocks.crawl"]["pages_per_s"] / full["scrapy (links only)"]["pages_per_s"], 2),
        "vs_scrapy_same_extraction": round(full["blocks.crawl"]["pages_per_s"] / full["scrapy + extract"]["pages_per_s"], 2),
    }  # fmt: skip
    print("ratio (blocks.crawl / scrapy):", ratios)
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"concurrency": args.concurrency, "results": results, "ratios": ratios, "time": time.time()}
    (OUT / "crawl_throughput.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")

    return 0


if __name__ == "__main__":
    sys.exit(main())
