"""Load, bounded and loopback only: 20 concurrent API clients against blocks.serve with the embedded model,
and crawl + QA generation + chat used at the same time from different threads.

Memory is read from /proc/self/status (VmRSS), so no extra package is needed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_llm_server import DEMO_PAGES, FakeLLMServer, campus_responder, write_crawl

from blocks.chat import GenParams, build_messages, generate_reply, load_model, unload_model
from blocks.workspace import get_project

KEY = "load-test-key-0123456789"
QUESTION = "When does the library open?"


def rss_mib() -> float:
    """This process's resident memory in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_twenty_concurrent_clients_get_the_greedy_answer_and_memory_stays_flat(embedded_model_dir):
    import openai

    from blocks.serve import create_app, start_server

    loaded = load_model(embedded_model_dir)
    try:
        with start_server(create_app(loaded, api_key=KEY, max_new_tokens=16)) as server:
            client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=240)

            def ask(_: int = 0) -> str:
                reply = client.chat.completions.create(
                    model=loaded.name,
                    messages=[{"role": "user", "content": QUESTION}],
                    temperature=0,
                    max_tokens=12,
                )
                return reply.choices[0].message.content

            expected = ask()
            assert expected.strip()
            with ThreadPoolExecutor(20) as pool:  # warm-up round: allocator and thread pools settle
                list(pool.map(ask, range(20)))
            before = rss_mib()
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(ask, range(20)))
            grown = rss_mib() - before
    finally:
        unload_model(loaded)
    assert answers == [expected] * 20
    assert grown < 64, f"resident memory grew by {grown:.0f} MiB over 20 requests"


@pytest.mark.timeout(180)
def test_crawl_qa_and_chat_at_the_same_time_stay_correct(workspace, tiny_model_dir):
    from blocks.crawl import CrawlOptions, crawl_site, read_manifest
    from blocks.demo_site import start_demo_site
    from blocks.llm import OpenAIClient, RetryPolicy
    from blocks.qa import QASettings, generate_qa

    greedy = GenParams(temperature=0, max_new_tokens=8, repetition_penalty=1.0)
    loaded = load_model(tiny_model_dir)
    messages = build_messages([], QUESTION)
    expected_reply = generate_reply(loaded, messages, greedy).text
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def crawl(site_url: str) -> None:
        start.wait()
        out = get_project("crawl").crawl_dir
        list(crawl_site(site_url + "/index.htm", out, CrawlOptions(delay=0, max_pages=15, retries=0)))
        results["crawl"] = read_manifest(out)

    def qa(api_url: str) -> None:
        project = get_project("qa")
        write_crawl(project.root)
        start.wait()
        policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
        results["qa"] = list(generate_qa(project, OpenAIClient(api_url, "m"), QASettings(), policy=policy))[
            -1
        ]

    def chat() -> None:
        start.wait()
        results["chat"] = [generate_reply(loaded, messages, greedy).text for _ in range(5)]

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # handed to the test thread, which fails with it
            errors.append(exc)

    try:
        with start_demo_site() as site, FakeLLMServer(responder=campus_responder) as api:
            threads = [
                threading.Thread(target=guarded, args=(crawl, site.url)),
                threading.Thread(target=guarded, args=(qa, api.url)),
                threading.Thread(target=guarded, args=(chat,)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=150)
    finally:
        unload_model(loaded)
    assert not errors, errors
    docs = results["crawl"]
    assert len(docs) >= 5 and len({d["url"] for d in docs}) == len(docs)
    report = results["qa"]
    assert report.done == len(DEMO_PAGES) and report.failed == 0 and report.pairs >= len(DEMO_PAGES)
    assert results["chat"] == [expected_reply] * 5
