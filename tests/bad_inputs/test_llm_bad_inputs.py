"""LLM stages (clean, QA) bad input: a clear message from the CLI (exit 2, or exit 1 with the failed pages
and their reasons), from clean_pages / generate_qa (a specific exception or a failed-with-reason page) and
from the tabs (gr.Error), and the clean files and qa.jsonl produced earlier stay byte-for-byte as they were.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, campus_responder, write_crawl
from tabs import tab_handlers

from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks.clean import CleanSettings, PromptError, StageInputError, clean_pages, read_jsonl
from blocks.llm import LLMError, LocalClient, OpenAIClient, RetryPolicy, SettingsError
from blocks.qa import QASettings, generate_qa
from blocks.workspace import get_project

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
MARKER_NAME = "UNPICKLED"


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(responder=campus_responder) as running:
        yield running


@pytest.fixture(scope="module")
def finished(server, tmp_path_factory) -> Path:
    """A project folder with a finished clean and QA run (built once, copied into each test)."""
    project = get_project("p", data_dir=tmp_path_factory.mktemp("finished"))
    write_crawl(project.root)
    client = OpenAIClient(server.url, "m")
    list(clean_pages(project, client, CleanSettings(concurrency=2), policy=FAST))
    list(generate_qa(project, client, QASettings(concurrency=2), policy=FAST))
    assert len(project.qa_file.read_text().splitlines()) >= 6
    return project.root


@pytest.fixture()
def done(workspace, server, finished):
    """Project 'p' with a finished clean and QA run: what a failed rerun must leave alone."""
    server.responder, server.rates = campus_responder, {}
    shutil.copytree(finished, workspace / "p")
    return get_project("p")


def pairs_of(project) -> set[tuple[str, str]]:
    """(source_url, question) of every pair in qa.jsonl."""
    return {(r["source_url"], r["question"]) for r in read_jsonl(project.qa_file)}


def outputs(project) -> dict[str, bytes]:
    """The files a user relies on: cleaned texts and qa.jsonl (state logs may grow)."""
    clean = {k: v for k, v in snapshot(project.clean_dir).items() if k.endswith(".txt")}
    return {**clean, "qa.jsonl": project.qa_file.read_bytes()}


def api_args(server, stage: str = "qa", *extra: str) -> list[str]:
    return ["-m", f"blocks.{stage}", "--project", "p", "--backend", "openai", "--base-url", server.url,
            "--model", "m", "--concurrency", "2", *extra]  # fmt: skip


def stage_fn(stage: str, project, client, **settings):
    if stage == "clean":
        return clean_pages(project, client, CleanSettings(**settings), policy=FAST)
    return generate_qa(project, client, QASettings(**settings), policy=FAST)


# ---------------------------------------------------------------- broken crawl output


def _no_manifest(root: Path) -> None:
    (root / "crawl" / "pages.jsonl").unlink()


def _manifest(content: bytes):
    def write(root: Path) -> None:
        (root / "crawl" / "pages.jsonl").write_bytes(content)

    return write


def _manifest_is_a_folder(root: Path) -> None:
    _no_manifest(root)
    (root / "crawl" / "pages.jsonl").mkdir()


def _traversal(root: Path) -> None:
    rec = {"url": "https://x.edu.cn/", "title": "t", "text_file": "../../../../../../etc/passwd"}
    (root / "crawl" / "pages.jsonl").write_text(json.dumps(rec) + "\n")


BROKEN_CRAWLS = [
    ("no-pages-jsonl", _no_manifest, ["No crawl output", "run the Crawl tab"]),
    ("pages-jsonl-is-a-folder", _manifest_is_a_folder, ["No crawl output"]),
    ("empty-pages-jsonl", _manifest(b""), ["lists no usable pages"]),
    ("malformed-lines", _manifest(b'{"url": \nnot json\n{"text_file": "pages/0.txt"\n'), ["3 lines are not valid"]),
    ("binary-pages-jsonl", _manifest(bytes(range(256)) * 8), ["lists no usable pages", "not valid page records"]),
    ("json-but-not-objects", _manifest(b'[1, 2]\n"pages/000000.txt"\n42\n'), ["3 lines are not valid"]),
    ("text-file-wrong-type", _manifest(b'{"url": "u", "text_file": 7}\n'), ["1 lines are not valid"]),
    ("text-file-escapes-the-crawl", _traversal, ["lists no usable pages"]),
]  # fmt: skip


@pytest.mark.parametrize("stage", ["qa", "clean"])
@pytest.mark.parametrize("case,breaker,words", BROKEN_CRAWLS, ids=[c[0] for c in BROKEN_CRAWLS])
def test_broken_crawl_output_is_refused_and_outputs_kept(case, breaker, words, stage, done, server):
    breaker(done.root)
    before, sent = outputs(done), len(server.requests)
    if stage == "qa":  # the two CLIs share run_cli: one is enough to show the message reaches the user
        assert_refused(run_cli(api_args(server, stage, "--overwrite")), *words)
    with pytest.raises(StageInputError) as caught:
        list(stage_fn(stage, done, OpenAIClient(server.url, "m"), overwrite=True))
    for word in words:
        assert word in str(caught.value)
    assert outputs(done) == before
    assert len(server.requests) == sent  # nothing was sent, so /etc/passwd never left the machine


@pytest.mark.parametrize("stage", ["qa", "clean"])
@pytest.mark.parametrize(
    "case,content,reason",
    [
        ("missing-text-file", None, "missing_input"),
        ("text-not-utf8", b"\xff\xfe\x00bad\x81", "unreadable_input"),
    ],
)
def test_unreadable_page_fails_alone_with_its_reason(case, content, reason, stage, done, server):
    page = done.crawl_dir / "pages" / "000001.txt"
    page.unlink() if content is None else page.write_bytes(content)
    before, pairs = outputs(done), pairs_of(done)
    flags = ["--overwrite", "--source", "raw"] if stage == "qa" else ["--overwrite"]
    proc = run_cli(api_args(server, stage, *flags))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"000001: {reason}" in proc.stderr and "run again to retry" in proc.stderr
    assert "2 done, 1 failed" in proc.stdout
    extra = {"source": "raw"} if stage == "qa" else {}
    report = list(stage_fn(stage, done, OpenAIClient(server.url, "m"), overwrite=True, **extra))[-1]
    assert report.failures["000001"].startswith(reason) and report.done == 2
    if stage == "qa":  # the failed page keeps the pairs of its earlier run; the others were redone
        assert pairs_of(done) == pairs
    else:
        assert outputs(done) == before


# ---------------------------------------------------------------- prompts and settings


BAD_PROMPTS = [
    ("qa-without-text", "qa", "Write {n} questions as JSON.", ["lacks {text}"]),
    ("qa-without-n", "qa", "Write questions about {text} as JSON.", ["lacks {n}"]),
    ("clean-without-text", "clean", "Clean the page, please.", ["lacks {text}"]),
    ("empty-prompt-file", "qa", "", ["is empty"]),
    ("binary-prompt-file", "qa", b"\x89PNG\r\n\x1a\n\xff\xfe", ["not UTF-8"]),
    ("missing-prompt-file", "qa", None, ["Cannot read the prompt file"]),
]


@pytest.mark.parametrize("case,stage,prompt,words", BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_bad_prompt_is_refused_and_outputs_kept(case, stage, prompt, words, done, server, tmp_path):
    path = tmp_path / "prompt.txt"
    if isinstance(prompt, bytes):
        path.write_bytes(prompt)
    elif prompt is not None:
        path.write_text(prompt, encoding="utf-8")
    before, sent = outputs(done), len(server.requests)
    assert_refused(run_cli(api_args(server, stage, "--overwrite", "--prompt-file", str(path))), *words)
    if isinstance(prompt, str) and prompt:
        with pytest.raises(PromptError, match=re.escape(words[0])):
            list(stage_fn(stage, done, OpenAIClient(server.url, "m"), prompt=prompt, overwrite=True))
    assert outputs(done) == before and len(server.requests) == sent


BAD_SETTINGS = [
    ("chunk-zero", ["--chunk-tokens", "0"], {"chunk_tokens": 0}, "chunk_tokens is 0"),
    ("concurrency-zero", ["--concurrency", "0"], {"concurrency": 0}, "concurrency is 0"),
    ("variants-negative", ["--variants", "-1"], {"variants": -1}, "variants is -1"),
]


@pytest.mark.parametrize("case,flags,fields,message", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_numbers_name_the_setting(case, flags, fields, message, done, server):
    before = outputs(done)
    assert_refused(run_cli([*api_args(server, "qa"), *flags]), message)
    with pytest.raises(StageInputError, match=message):
        list(generate_qa(done, OpenAIClient(server.url, "m"), QASettings(**fields)))
    assert outputs(done) == before


BAD_URLS = [
    ("words", "not a url", "is not an http(s) address"),
    ("ftp", "ftp://127.0.0.1/v1", "is not an http(s) address"),
    ("no-scheme", "localhost:8000/v1", "is not an http(s) address"),
    ("port-out-of-range", "http://127.0.0.1:99999/v1", "is not an http(s) address"),
    ("space-inside", "http://127.0.0.1:8000/ v1", "contains spaces"),
]


@pytest.mark.parametrize("case,url,message", BAD_URLS, ids=[c[0] for c in BAD_URLS])
def test_bad_base_url_is_refused_before_any_work(case, url, message, done):
    before = outputs(done)
    args = ["-m", "blocks.qa", "--project", "p", "--backend", "openai", "--base-url", url, "--model", "m"]
    assert_refused(run_cli(args), message)
    with pytest.raises(SettingsError, match=re.escape(message)):
        OpenAIClient(url, "m")
    assert outputs(done) == before


def test_unreachable_api_stops_at_once_with_the_address(done):
    """A closed port: one clear error naming the URL, not 30 s of retries and a page of failures."""
    before = outputs(done)
    url = "http://127.0.0.1:9/v1"
    proc = run_cli(["-m", "blocks.qa", "--project", "p", "--backend", "openai", "--base-url", url, "--model",
                    "m", "--overwrite", "--timeout", "5"], timeout=60)  # fmt: skip
    assert_refused(proc, "Cannot reach the API at http://127.0.0.1:9/v1", "check the base URL")
    with pytest.raises(LLMError, match="Cannot reach the API"):
        list(generate_qa(done, OpenAIClient(url, "m", timeout=5), QASettings(overwrite=True)))
    assert outputs(done) == before


def test_refused_key_stops_the_run_and_keeps_outputs(done, server):
    server.rates = {"401": 1.0}
    try:
        before = outputs(done)
        proc = run_cli(api_args(server, "clean", "--overwrite"), env={"OPENAI_API_KEY": "sk-wrong"})
        assert_refused(proc, "the API key was refused", "check the key")
        with pytest.raises(LLMError, match="the API key was refused"):
            list(generate_qa(done, OpenAIClient(server.url, "m", api_key="x"), QASettings(overwrite=True)))
    finally:
        server.rates = {}
    assert outputs(done) == before


def test_missing_client_settings_are_named(done, server, monkeypatch):
    monkeypatch.delenv("ZHIPUAI_API_KEY", raising=False)
    assert_refused(run_cli(["-m", "blocks.qa", "--project", "p", "--backend", "zhipu"]), "enter an API key")
    no_model = ["-m", "blocks.clean", "--project", "p", "--backend", "openai", "--base-url", server.url]
    assert_refused(run_cli(no_model), "enter the model name")


# ---------------------------------------------------------------- local model folders


class _Marker:
    """Unpickling this creates a file: proof that a pickle was opened."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def make_folder(root: Path, kind: str) -> Path:
    folder = root / "models" / kind
    if kind == "a-file":
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")
        return folder
    folder.mkdir(parents=True)
    if kind in ("config-no-weights", "only-bin-pickle", "corrupt-safetensors"):
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    if kind == "only-bin-pickle":
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(str(root / MARKER_NAME))))
    if kind == "corrupt-safetensors":
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + b"\0" * 64)
    return folder


LOCAL_FOLDERS = [
    ("empty-dir", ["no config.json"]),
    ("a-file", ["is not a folder"]),
    ("config-no-weights", ["no .safetensors weights"]),
    ("only-bin-pickle", ["no .safetensors weights", "pickled weights are never loaded"]),
    ("corrupt-safetensors", ["Cannot load the model"]),
]


@pytest.mark.parametrize("kind,words", LOCAL_FOLDERS, ids=[c[0] for c in LOCAL_FOLDERS])
def test_bad_local_model_folder_is_refused_never_unpickled(kind, words, done, local_tab):
    import gradio as gr

    folder = make_folder(done.root, kind)
    before = outputs(done)
    if kind != "corrupt-safetensors":  # that one needs torch in the child: the function and tab cover it
        args = ["-m", "blocks.clean", "--project", "p", "--backend", "local", "--model-path", str(folder)]
        assert_refused(run_cli(args), *words)
    with pytest.raises(SettingsError) as caught:
        if kind == "corrupt-safetensors":  # passes the cheap folder check; loading it fails
            list(clean_pages(done, LocalClient(str(folder)), CleanSettings(overwrite=True)))
        else:
            LocalClient(str(folder))
    with pytest.raises(gr.Error) as shown:
        list(local_tab["on_start"]("p", "en", str(folder), 2, False, 1000, 0, True, "", False))
    for word in words:
        assert word in str(caught.value) and word in str(shown.value.message)
    assert not (done.root / MARKER_NAME).exists()
    assert outputs(done) == before


# ---------------------------------------------------------------- what the model answers


NO_QA_ANSWERS = [
    ("garbage", "I am sorry, I cannot help with that request.", "I am sorry"),
    (
        "only-think",
        "<think>The user wants questions. Let me think about the library...</think>",
        "only <think>",
    ),
    ("unclosed-think", "<think>Let me think step by step about the canteen", "only <think>"),
    ("empty-json-array", "[]", "[]"),
    ("json-without-pairs", '{"note": "no questions here"}', "no questions here"),
]


@pytest.mark.parametrize("case,answer,sample", NO_QA_ANSWERS, ids=[c[0] for c in NO_QA_ANSWERS])
def test_answers_without_qa_fail_the_page_and_keep_earlier_pairs(case, answer, sample, done, server):
    server.responder = lambda messages: answer
    try:
        before = outputs(done)
        proc = run_cli(api_args(server, "qa", "--overwrite"))
        report = list(
            generate_qa(done, OpenAIClient(server.url, "m"), QASettings(overwrite=True), policy=FAST)
        )[-1]
    finally:
        server.responder = campus_responder
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no_qa: the model's answers contained no question-answer pairs" in proc.stderr
    assert "0 done, 3 failed" in proc.stdout
    assert report.failed == 3 and all(m.startswith("no_qa") for m in report.failures.values())
    assert sample in next(iter(report.failures.values()))
    assert outputs(done) == before  # every earlier pair is still in qa.jsonl


def test_clean_answer_of_only_reasoning_fails_the_page_not_its_file(done, server):
    server.responder = lambda messages: "<think>Remove the menu, keep the hours.</think>\n"
    try:
        before = outputs(done)
        proc = run_cli(api_args(server, "clean", "--overwrite"))
        report = list(
            clean_pages(done, OpenAIClient(server.url, "m"), CleanSettings(overwrite=True), policy=FAST)
        )[-1]
    finally:
        server.responder = campus_responder
    assert proc.returncode == 1 and "empty_output" in proc.stderr and "Traceback" not in proc.stderr
    assert report.failed == 3 and "reasoning (<think>) only" in report.failures["000000"]
    assert outputs(done) == before  # the earlier cleaned text is not replaced by an empty file


# ---------------------------------------------------------------- the tabs


@pytest.fixture(scope="module")
def local_tab(tmp_path_factory):
    return tab_handlers("ui_local_clean", tmp_path_factory.mktemp("tab-data"))


@pytest.fixture(scope="module")
def api_tab(tmp_path_factory):
    return tab_handlers("ui_api_clean", tmp_path_factory.mktemp("tab-data"))


@pytest.fixture(scope="module")
def qa_tab(tmp_path_factory):
    return tab_handlers("ui_qa", tmp_path_factory.mktemp("tab-data"))


def qa_tab_run(qa_tab, url: str, prompt: str = "{text} {n}", source: str = "auto", chunk=800):
    return list(qa_tab["on_start"]("p", "en", "openai", "k", url, "m", 2, "", 8, False,
                                   source, chunk, 80, 8, 0, False, 0.5, True, prompt, "{text}{question}{answer}",
                                   "{question}{k}", False))  # fmt: skip


def test_tabs_turn_bad_input_into_messages(done, server, api_tab, qa_tab):
    import gradio as gr

    before = outputs(done)
    cases = [
        (lambda: qa_tab_run(qa_tab, "not a url"), "is not an http(s) address"),
        (lambda: qa_tab_run(qa_tab, server.url, prompt="no placeholders"), "lacks {text}"),
        (lambda: qa_tab_run(qa_tab, server.url, chunk=3), "chunk_tokens is 3"),
        (lambda: qa_tab_run(qa_tab, "http://127.0.0.1:9/v1"), "Cannot reach the API"),
        (
            lambda: list(
                api_tab["on_start"](
                    "p", "en", "zhipu", "k", "ftp://x", "", 2, 1000, True, True, "{text}", "{text}{n}"
                )
            ),
            "is not an http(s) address",
        ),  # fmt: skip
        (
            lambda: list(
                api_tab["on_start"](
                    "p", "en", "openai", "k", server.url, "m", 2, 1000, True, True, "clean it", "{text}{n}"
                )
            ),
            "lacks {text}",
        ),  # fmt: skip
    ]
    for call, message in cases:
        with pytest.raises(gr.Error) as shown:
            call()
        assert message in str(shown.value.message)
    (done.crawl_dir / "pages.jsonl").unlink()
    with pytest.raises(gr.Error, match="No crawl output"):
        qa_tab_run(qa_tab, server.url)
    assert outputs(done) == before
