"""Chunking and the clean stage: real SDK clients against the fake server, and a tiny local model."""

from __future__ import annotations

import json
import threading

import pytest
from fake_llm_server import DEMO_PAGES, FakeLLMServer, campus_responder, write_crawl

from blocks import clean, llm
from blocks.chunking import chunk_text, split_long
from blocks.clean import CleanSettings, PromptError, StageInputError, clean_pages, read_state
from blocks.llm import OpenAIClient, RetryPolicy, ZhipuClient, estimate_tokens
from blocks.workspace import get_project

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- chunking


def test_chunks_keep_paragraphs_whole_and_under_the_limit():
    paras = [f"para{i}" + " word" * 9 for i in range(10)]  # 10 paragraphs of 10 words
    chunks = chunk_text("\n".join(paras), 35, words)
    assert all(c.n_tokens <= 35 for c in chunks)
    assert [c.text.count("para") for c in chunks] == [3, 3, 3, 1]
    assert "\n".join(c.text for c in chunks).split("\n") == paras  # nothing lost, nothing cut


def test_overlap_repeats_the_last_paragraph_of_the_previous_chunk():
    paras = [f"para{i}" + " word" * 9 for i in range(6)]
    chunks = chunk_text("\n".join(paras), 35, words, overlap_tokens=10)
    assert all(c.n_tokens <= 35 for c in chunks)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.text.split("\n")[0] == prev.text.split("\n")[-1]
    assert chunks[-1].text.endswith(paras[-1])


def test_a_paragraph_longer_than_the_limit_is_cut_at_sentence_ends():
    para = "东湖大学始建于1923年。" * 40
    pieces = split_long(para, 50, estimate_tokens)
    assert all(estimate_tokens(p) <= 50 for p in pieces)
    assert all(p.endswith("。") for p in pieces)
    assert "".join(pieces) == para
    unbroken = "x" * 1000  # no sentence end at all: hard split
    assert all(estimate_tokens(p) <= 50 for p in split_long(unbroken, 50, estimate_tokens))


def test_a_too_small_chunk_size_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        chunk_text("text", 4, words)


# ---------------------------------------------------------------- the stage over HTTP


@pytest.fixture()
def project(workspace):
    p = get_project("campus")
    write_crawl(p.root)
    return p


@pytest.fixture()
def server():
    with FakeLLMServer(campus_responder) as s:
        yield s


def run(gen):
    """Drive a stage generator to the end and return its final report."""
    return list(gen)[-1]


def test_clean_writes_one_clean_file_per_page_without_boilerplate(project, server):
    report = run(
        clean_pages(project, OpenAIClient(server.url, "m"), CleanSettings(concurrency=2), policy=FAST)
    )
    assert (report.done, report.failed, report.skipped) == (3, 0, 0)
    assert report.finished and "3 done, 0 failed" in report.summary()
    library = (project.clean_dir / "000000.txt").read_text(encoding="utf-8")
    assert "版权所有" not in library and "027-87651234" in library
    state = read_state(project.clean_dir / "state.jsonl")
    assert {s["status"] for s in state.values()} == {"done"}
    assert state["000000"]["url"] == DEMO_PAGES[0][0] and state["000000"]["backend"] == "openai"


def test_stop_then_rerun_does_only_the_missing_pages(project, server):
    client = ZhipuClient("k", base_url=server.url)
    stop = threading.Event()
    for report in clean_pages(project, client, CleanSettings(concurrency=1), stop=stop, policy=FAST):
        if report.done == 1:
            stop.set()
    assert report.stopped and report.done == 1
    sent = len(server.requests)
    report = run(clean_pages(project, client, CleanSettings(concurrency=1), policy=FAST))
    assert report.skipped == 1 and report.done == 2
    assert len(server.requests) - sent == 2  # the first page was not sent again
    lines = (project.clean_dir / "state.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == ["000000", "000001", "000002"]
    assert run(clean_pages(project, client, policy=FAST)).skipped == 3  # idempotent


def test_a_refused_page_is_reported_and_the_run_goes_on(project, server):
    client = OpenAIClient(server.url, "m")
    server.fail_next("1301")
    report = run(clean_pages(project, client, CleanSettings(concurrency=1), policy=FAST))
    assert (report.done, report.failed) == (2, 1)
    assert "content_filter 1" in report.summary()
    assert report.failures["000000"].startswith("content_filter")
    assert not (project.clean_dir / "000000.txt").exists()
    again = run(clean_pages(project, client, policy=FAST))  # only the failed page is retried
    assert (again.done, again.skipped, again.failed) == (1, 2, 0)


def test_a_torn_state_line_after_a_crash_is_ignored(project, server):
    client = OpenAIClient(server.url, "m")
    run(clean_pages(project, client, policy=FAST))
    with open(project.clean_dir / "state.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "000001", "status": "do')  # killed mid-write
    assert run(clean_pages(project, client, policy=FAST)).skipped == 3


def test_bad_input_gives_clear_messages(workspace, server):
    empty = get_project("empty")
    with pytest.raises(StageInputError, match="run the Crawl tab"):
        run(clean_pages(empty, OpenAIClient(server.url, "m")))
    project = get_project("p")
    write_crawl(project.root)
    with pytest.raises(PromptError, match=r"\{text\}"):
        run(clean_pages(project, OpenAIClient(server.url, "m"), CleanSettings(prompt="Clean this page.")))


def test_cli_runs_the_stage_and_reports(project, server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-key")
    args = ["--project", "campus", "--backend", "openai", "--base-url", server.url, "--model", "m"]
    assert clean.main(args) == 0
    out = capsys.readouterr()
    assert "3 done, 0 failed" in out.out and "sk-cli-key" not in out.out + out.err
    assert clean.main(["--project", "campus", "--backend", "openai", "--model", "m"]) == 2
    assert "base URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        clean.main(["--help"])
    assert "--backend" in capsys.readouterr().out


# ---------------------------------------------------------------- local backend


def test_local_clean_fits_chunks_into_a_small_context(project, tiny_model_dir):
    client = llm.LocalClient(str(tiny_model_dir), batch_size=4)
    try:
        assert client.context_tokens == 512
        with pytest.raises(
            llm.SettingsError, match="shorten the prompt"
        ):  # long default prompt, tiny tokenizer
            run(clean_pages(project, client, CleanSettings(max_new_tokens=24)))
        settings = CleanSettings(
            prompt="Clean:\n{text}", chunk_tokens=4000, max_new_tokens=24, release_model=True
        )
        report = run(clean_pages(project, client, settings))
    finally:
        llm.unload_local_models()
    assert report.failed + report.done == 3  # no ContextOverflowError: chunks were shrunk to fit
    assert all(not r.startswith("context_overflow") for r in report.failures.values())
    assert llm.loaded_local_models() == []  # released at the end of the run


def test_a_rerun_removes_temp_files_that_a_killed_writer_left(tmp_path):
    """write_text_atomic's temp file survives a SIGKILL between write and rename; the next run deletes
    it if its writer is gone, and leaves the files of live writers (other threads, other processes)."""
    import os
    import subprocess
    import sys

    from blocks.clean import remove_stale_temp_files

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    folder = tmp_path / "qa"
    (folder / "pages").mkdir(parents=True)
    stale = [
        folder / f".qa.jsonl.{dead_pid}.140142394153856.tmp",
        folder / "pages" / f".000001.jsonl.{dead_pid}.7.tmp",
    ]
    live = [folder / f".qa.jsonl.{os.getpid()}.1.tmp", folder / f".state.jsonl.{os.getppid()}.2.tmp"]
    kept = [folder / "qa.jsonl", folder / ".notes.tmp"]  # not write_text_atomic's pattern: never touched
    for path in stale + live + kept:
        path.write_text("x")
    remove_stale_temp_files(folder)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live + kept)
    remove_stale_temp_files(tmp_path / "missing")  # a stage's first run: no folder yet


def test_local_clean_shows_chunks_done_and_tokens_per_second_inside_a_page(project, tiny_model_dir):
    """A long page on a slow CPU must show signs of life: chunk counts and tok/s before the page is done."""
    client = llm.LocalClient(str(tiny_model_dir), batch_size=1, threads=1)
    settings = CleanSettings(prompt="Clean:\n{text}", chunk_tokens=24, max_new_tokens=8)
    seen = []
    try:
        for report in clean_pages(project, client, settings):
            seen.append(
                (report.done, report.units_done, report.units_total, report.summary(), report.eta_s())
            )
    finally:
        llm.unload_local_models()
    total = seen[-1][2]
    assert total > 3  # the three pages were cut into several chunks each
    before_first_page = [s for s in seen if s[0] == 0]
    assert any(units > 0 for _, units, *_ in before_first_page)  # progress before any page finished
    assert any(f"/{total} chunks" in text and "tok/s" in text for *_, text, _ in before_first_page)
    assert any(eta is not None for *_, eta in before_first_page)
    assert seen[-1][1] == total
