"""One bad model reply, a cut-off response, a wrong base URL path: what the clean and QA runs do with them.

Issue 16, items 5 and 14. The real `openai` SDK talks to tests/fake_llm_server.py over loopback; one page of
four gets the bad reply on every request (retries included), the other three get good answers. The run
must finish with that one page failed (or its pairs dropped) for a stated reason, the other pages done, no
temporary file left, and every output line readable UTF-8 JSON. A wrong base URL path (404 on every call)
must stop the run once, before it sends a request per page.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, campus_responder, write_crawl

from blocks.clean import CleanSettings, clean_pages, read_state
from blocks.llm import NotFoundError, OpenAIClient, RetryPolicy, TruncatedResponseError
from blocks.qa import QASettings, generate_qa
from blocks.workspace import get_project
from faults.test_llm_faults import campus_pages

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, item_timeout=20)
BAD_PAGE = "东湖大学1号楼"  # campus_pages(4): the title of page 000001, in every prompt made from it
DEEP = 100_000

# What a model (or the wire) can hand back that is not an answer: content nested too deeply for
# json.loads (RecursionError), text with a lone surrogate (a JSON "\ud800" escape: no UTF-8 file can hold
# it), a JSON pair whose strings carry that escape, and at the HTTP level a body nested too deeply for the
# SDK and a body cut off before its Content-Length.
FACT = "图书馆位于东湖大学1号楼，开放时间为8:10至22:00。"  # a line of the bad page: a grounded answer
BAD_CONTENT = {
    "nested_array": "[" * DEEP + "]" * DEEP,
    "nested_object": '{"a":' * DEEP + "1" + "}" * DEEP,
    # the text itself holds U+D800 (the server sends it as a JSON escape, the SDK decodes it)
    "lone_surrogate": json.dumps(
        [{"question": "\ud800图书馆几点开门？", "answer": FACT}], ensure_ascii=False
    ),
    # the model wrote the escape into its JSON: the pair's strings hold it once QA parses them
    "surrogate_in_pair": json.dumps([{"question": "\ud800图书馆几点开门？", "answer": "\udfff" + FACT}]),
}
BAD_BODY = ("nested", "truncated")


def is_bad_page(messages: list[dict]) -> bool:
    return BAD_PAGE in messages[-1]["content"]


def serve_bad_page(server: FakeLLMServer, kind: str) -> None:
    """Answer every request about BAD_PAGE with the bad reply `kind`, the others with campus_responder."""
    if kind in BAD_BODY:
        server.fault_for = lambda messages: kind if is_bad_page(messages) else None
    else:
        bad = BAD_CONTENT[kind]
        server.responder = lambda messages: bad if is_bad_page(messages) else campus_responder(messages)


def run_stage(stage: str, project, client) -> object:
    if stage == "qa":
        run = generate_qa(project, client, QASettings(source="raw", concurrency=2), policy=FAST)
    else:
        run = clean_pages(project, client, CleanSettings(concurrency=2), policy=FAST)
    return list(run)[-1]


def assert_readable_outputs(stage_dir: Path) -> None:
    """Every file the stage wrote is strict UTF-8; every JSONL line is a JSON object of encodable text."""
    for path in stage_dir.rglob("*"):
        if not path.is_file() or path.name == "STOP":
            continue
        text = path.read_bytes().decode("utf-8")  # strict: raises on a surrogate written raw
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                record = json.loads(line)
                assert isinstance(record, dict), path
                json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate inside


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", [*BAD_CONTENT, *BAD_BODY])
@pytest.mark.parametrize("stage", ["clean", "qa"])
def test_one_bad_reply_fails_its_page_only_and_the_run_goes_on(stage, kind, workspace):
    project = get_project("p")
    write_crawl(project.root, campus_pages(4))
    with FakeLLMServer(responder=campus_responder) as server:
        serve_bad_page(server, kind)
        report = run_stage(stage, project, OpenAIClient(server.url, "m", timeout=10))
    stage_dir = project.qa_dir if stage == "qa" else project.clean_dir
    state = read_state(stage_dir / "state.jsonl")
    assert report.finished and not report.stopped
    assert report.done + report.failed == 4 and report.done >= 3, report.summary()
    assert {k for k, v in state.items() if v["status"] == "done"} >= {"000000", "000002", "000003"}
    bad = state["000001"]
    if bad["status"] == "failed":  # the page failed with its reason, in the state file and the report
        assert bad["reason"] and report.failures["000001"] == bad["reason"]
        if kind == "truncated":
            assert bad["reason"].startswith("truncated:") and "cannot reach" not in bad["reason"].lower()
    else:  # a reply that is text after all (clean) or whose pairs were all dropped, each with its reason
        assert bad["status"] == "done"
        assert kind in ("nested_array", "nested_object", "surrogate_in_pair"), bad
        if stage == "qa":
            assert bad["pairs"] == 0 and bad["drops"], bad
    assert not list(project.root.rglob("*.tmp"))
    assert_readable_outputs(stage_dir)
    if stage == "qa":
        pages = {json.loads(line)["source_url"] for line in project.qa_file.read_text("utf-8").splitlines()}
        assert len(pages) == 3 and not any("/b1/" in url for url in pages)


@pytest.mark.timeout(60)
def test_truncated_response_is_reported_as_truncated_not_unreachable():
    with FakeLLMServer() as server:
        client = OpenAIClient(server.url, "m", timeout=10)
        server.fail_next("truncated")  # before any answer: used to read "cannot reach the API: check the URL"
        with pytest.raises(TruncatedResponseError, match="truncated") as first:
            client.chat([{"role": "user", "content": "hi"}])
        assert first.value.retryable and "reach" not in str(first.value)
        assert client.chat([{"role": "user", "content": "hi"}]) == "hi"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["clean", "qa"])
def test_wrong_base_url_path_stops_the_run_once_with_check_the_base_url(stage, workspace):
    project = get_project("p")
    write_crawl(project.root, campus_pages(12))
    with FakeLLMServer(responder=campus_responder) as server:
        wrong = server.url.replace("/v1", "/api/v1")  # a reachable server, a path it does not have
        with pytest.raises(NotFoundError, match="check the base URL"):
            run_stage(stage, project, OpenAIClient(wrong, "m", timeout=10))
        assert server.not_found <= 2  # the requests already in flight (concurrency 2), not one per page
    state = read_state((project.qa_dir if stage == "qa" else project.clean_dir) / "state.jsonl")
    assert all(rec["status"] != "failed" for rec in state.values())  # no page marked failed one by one


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["clean", "qa"])
def test_wrong_base_url_path_cli_says_check_the_base_url_once(stage, workspace):
    project = get_project("p")
    write_crawl(project.root, campus_pages(12))
    with FakeLLMServer(responder=campus_responder) as server:
        wrong = server.url.replace("/v1", "/api/v1")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                f"blocks.{stage}",
                "--project",
                "p",
                "--backend",
                "openai",
                "--base-url",
                wrong,
                "--model",
                "m",
                "--concurrency",
                "1",
            ],  # fmt: skip
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
        sent = server.not_found
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("check the base URL") == 1 and "Traceback" not in proc.stderr
    assert "failed pages" not in proc.stderr and sent == 1
