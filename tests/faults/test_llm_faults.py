"""Faults during the LLM stages: a flaky API, SIGKILL mid-QA, a disk that fills while QA writes.

Each test is bounded in time. The fake API is tests/fake_llm_server.py over loopback; the CLI runs as a
real subprocess (`python -m blocks.qa`) against it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, campus_responder, write_crawl

from blocks.clean import CleanSettings, clean_pages, read_jsonl, read_state
from blocks.llm import OpenAIClient, RetryPolicy
from blocks.qa import QASettings, generate_qa
from blocks.workspace import get_project
from faults.test_crawl_faults import small_disk

ROOT = Path(__file__).resolve().parents[2]
PLACES = ["图书馆", "食堂", "体育馆", "实验室", "礼堂", "校医院"]
FLAKY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, item_timeout=20)


def campus_pages(n: int, lines: int = 3, pad: int = 0) -> list[tuple[str, str, str]]:
    """`n` distinct pages in the crawl's shape; `pad` lengthens every fact line (bigger answers)."""
    pages = []
    for p in range(n):
        facts = [
            f"{PLACES[k]}位于东湖大学{p}号楼，开放时间为{8 + k}:{p % 6}0至22:00。" + "详" * pad
            for k in range(lines)
        ]
        pages.append((f"https://www.ehu.edu.cn/b{p}/index.htm", f"东湖大学{p}号楼", "\n".join(facts)))
    return pages


def pairs_of(qa_file: Path) -> list[tuple[str, str]]:
    return [(r["source_url"], r["question"]) for r in read_jsonl(qa_file)]


def qa_cmd(server, project: str = "p", *extra: str) -> list[str]:
    # --variants 0: no paraphrase requests, the tests count the QA prompts
    return [sys.executable, "-m", "blocks.qa", "--project", project, "--backend", "openai", "--base-url",
            server.url, "--model", "m", "--concurrency", "1", "--source", "raw", "--variants", "0",
            *extra]  # fmt: skip


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stage", ["qa", "clean"])
def test_flaky_api_every_page_ends_done_or_failed_with_a_reason(stage, workspace):
    with FakeLLMServer(responder=campus_responder, retry_after="0", seed=7) as server:
        server.rates = {"429": 0.1, "500": 0.1, "malformed": 0.1}
        project = get_project("p")
        write_crawl(project.root, campus_pages(24))
        client = OpenAIClient(server.url, "m", timeout=10)
        if stage == "qa":
            run = generate_qa(project, client, QASettings(source="raw", concurrency=4), policy=FLAKY)
        else:
            run = clean_pages(project, client, CleanSettings(concurrency=4), policy=FLAKY)
        report = list(run)[-1]
        faults = [r["fault"] for r in server.requests]
    assert report.finished and report.done + report.failed == 24
    assert {"429", "500", "malformed"} <= set(faults)
    state = read_state((project.qa_dir if stage == "qa" else project.clean_dir) / "state.jsonl")
    assert len(state) == 24
    for rec in state.values():
        assert rec["status"] == "done" or (rec["status"] == "failed" and rec["reason"]), rec
    assert report.done >= 18  # three attempts each: most pages get through 30% faults
    if stage == "qa":
        done = {r["url"] for r in state.values() if r["status"] == "done"}
        assert {url for url, _ in pairs_of(project.qa_file)} == done
    else:
        for rec in state.values():
            assert (project.clean_dir / f"{rec['id']}.txt").is_file() == (rec["status"] == "done")


@pytest.mark.timeout(120)
def test_sigkill_mid_qa_then_rerun_loses_nothing_and_duplicates_nothing(workspace, tmp_path):
    pages = campus_pages(16)
    with FakeLLMServer(responder=campus_responder) as server:
        reference = get_project("ref")
        write_crawl(reference.root, pages)
        proc = subprocess.run(qa_cmd(server, "ref"), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        expected = pairs_of(reference.qa_file)
        assert len(expected) >= 16 * 2 and len({url for url, _ in expected}) == 16

        project = get_project("p")
        write_crawl(project.root, pages)
        server.latency = 0.15  # slow enough to be killed between two waves
        state = project.qa_dir / "state.jsonl"
        child = subprocess.Popen(
            qa_cmd(server), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_state(state)) < 4:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        server.latency = 0.0
        finished_before = {k for k, v in read_state(state).items() if v["status"] == "done"}
        assert 4 <= len(finished_before) < 16
        with state.open("a", encoding="utf-8") as fh:  # the worst case: a kill inside a line
            fh.write('{"id": "000009", "status": "do')
        seen = len(server.requests)
        rerun = subprocess.run(qa_cmd(server), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        resent = {json.dumps(r["body"]["messages"], ensure_ascii=False) for r in server.requests[seen:]}
    got = pairs_of(project.qa_file)
    assert sorted(got) == sorted(expected)  # nothing lost
    assert len(got) == len(set(got))  # nothing twice
    ids = [r["id"] for r in read_jsonl(project.qa_file)]
    assert len(ids) == len(set(ids))
    assert len(resent) == 16 - len(finished_before)  # finished pages were not asked again
    assert not list(project.qa_dir.rglob("*.tmp"))


@pytest.mark.timeout(120)
def test_disk_full_during_qa_clear_error_qa_file_intact_then_resume(tmp_path):
    with (
        FakeLLMServer(responder=campus_responder) as server,
        small_disk(tmp_path, 512) as (disk, preexec, grow),
    ):
        env = {**os.environ, "UMTCDS_DATA_DIR": str(disk)}
        project = get_project("p", data_dir=disk)
        write_crawl(project.root, campus_pages(3))
        first = subprocess.run(qa_cmd(server), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        earlier = pairs_of(project.qa_file)
        write_crawl(project.root, campus_pages(40, lines=6, pad=150))  # ~40 pages of long answers
        filler = None
        if preexec is None:  # leave ~48 KB free on the tmpfs: enough for a wave or two, not for all
            filler = disk / "filler"
            filler.write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - 48 * 1024))
        proc = subprocess.run(
            qa_cmd(server), cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, preexec_fn=preexec
        )
        assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
        assert "Cannot write" in proc.stderr and "run again" in proc.stderr
        assert "Traceback" not in proc.stderr
        lines = project.qa_file.read_text(encoding="utf-8").splitlines()
        assert all(json.loads(line)["question"] for line in lines)  # whole lines only
        assert set(earlier) <= set(pairs_of(project.qa_file))  # the earlier pairs are all still there
        assert not list(project.qa_dir.rglob("*.tmp"))
        if filler is not None:
            filler.unlink()
        grow()
        again = subprocess.run(qa_cmd(server), cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
        assert again.returncode == 0, again.stderr
        got = pairs_of(project.qa_file)
    assert len(got) == len(set(got)) >= 40 * 3
    assert len({url for url, _ in got}) == 40 and set(earlier) <= set(got)
